// train: trains a registered model (ConvMixer by default) on an image data set, the engine's
// main job. Defaults reproduce the ConvMixer CIFAR-10 recipe (ConvMixer-256/8, k 5, p 2, AdamW
// lr 0.05 one-cycle, wd 0.005, batch 512, 25 epochs, RandAugment N 2 M 12).
// Each epoch: a progress bar (plain lines when not a terminal), one summary line, one JSON line
// appended to the metrics file, and an atomic checkpoint; Ctrl-C writes a checkpoint at the
// current batch and exits, and --resume continues from it (bit-identical on the CPU).
#include <unistd.h>

#include <csignal>
#include <iostream>
#include <string>

#include "engine/dist/communicator.h"
#include "examples/cli.h"
#include "examples/train_settings.h"
#include "examples/trainer.h"

using namespace dl;

namespace {

// The first Ctrl-C, SIGTERM or SIGHUP (a closed terminal, a dropped SSH session) stops at the
// next step with a checkpoint and says so at once; a second one ends the process.
void on_signal(int signal) {
  examples::request_stop();
  std::signal(signal, SIG_DFL);
  constexpr char kAcknowledged[] =
      "\nstopping after this step, with a checkpoint (signal again to end at once)\n";
  [[maybe_unused]] const ssize_t written =
      write(STDERR_FILENO, kAcknowledged, sizeof kAcknowledged - 1);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    cli::Flags flags("train",
                     "Trains ConvMixer (or another registered model) on an image data set.\n\n" +
                         examples::describe_recipes());
    examples::declare_flags(flags);
    if (!flags.parse(argc, argv)) return 0;
    examples::TrainRequest request = examples::request_from(flags);
    for (int i = 0; i < argc; ++i) {
      if (i) request.config.command += ' ';
      request.config.command += argv[i];
    }
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGHUP, on_signal);
    return examples::train(request.config, request.given);
  } catch (const std::exception& e) {
    // The other ranks of a data-parallel job may be waiting for this one in a collective: it ends
    // them all.
    dist::Communicator* comm = dist::started_world();
    const bool several = comm && comm->size() > 1;
    const std::string rank = several ? " (rank " + std::to_string(comm->rank()) + " of " +
                                           std::to_string(comm->size()) + ", ending every rank)"
                                     : "";
    // A new line first when a progress bar may be on the terminal's current line. One write, so
    // that another rank's output sharing the stream cannot land inside the line.
    std::cerr << std::string(isatty(STDERR_FILENO) ? "\n" : "") + "train: error" + rank + ": " +
                     e.what() + "\n";
    if (several) comm->abort(1);
    return 1;
  }
}
