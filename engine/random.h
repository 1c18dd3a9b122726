// The engine's seeded random generator (xoshiro256**): one seed drives initialisation, shuffling
// and augmentation. Its whole state is four 64-bit words, so a checkpoint can save and restore it.
#pragma once
#include <array>
#include <cstdint>

namespace dl {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) { reseed(seed); }
  void reseed(uint64_t seed);
  uint64_t next_u64();
  // Uniform in [0, 1) with 24 random bits.
  float uniform();
  // Uniform integer in [0, bound).
  uint64_t below(uint64_t bound);
  // Standard normal (Box-Muller).
  float normal();

  std::array<uint64_t, 4> state() const { return s_; }
  void set_state(const std::array<uint64_t, 4>& s) { s_ = s; }

 private:
  std::array<uint64_t, 4> s_{};
};

// Process-wide default generator used when an API is not given one.
Generator& default_generator();
void manual_seed(uint64_t seed);

}  // namespace dl
