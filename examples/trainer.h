// The training loop behind the `train` binary, as a library so tests can run, interrupt and
// resume it: per-epoch progress, evaluation, a metrics line (JSON) and an atomic checkpoint.
// Its settings are examples/train_settings.h's; its directory rules examples/run_directory.h's.
#pragma once
#include <set>
#include <string>

#include "examples/train_settings.h"

namespace dl::examples {

// Runs (or resumes) training. `given` names the settings the caller chose (flag names): on
// --resume every other setting is taken from the run's checkpoint and a given one that differs is
// refused (train_settings.h); for a new run a given setting must apply. Returns 0 when all epochs
// are done, 130 when stopped early by request_stop() or stop_after_steps (a checkpoint of the
// exact position is written first; a stop requested before the first step writes nothing).
// A new run's settings and device are checked before any file is touched; a resume's given
// settings and device likewise, the run's own once its directory is locked and its checkpoint
// read; the directory rules and the settings before the data is read. Bad configuration or data
// is a dl::Error.
int train(const TrainConfig& config, const std::set<std::string>& given = {});

// Asks a running train() to stop after the current step; safe to call from a signal handler.
void request_stop();

}  // namespace dl::examples
