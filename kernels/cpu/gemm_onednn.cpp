// The CPU's GEMMs on oneDNN's matmul (its brgemm kernels: AVX-512 FMAs in f32; AVX512-BF16 dot
// products or AMX tiles in bf16), in fixed row blocks of C: each block is one single-threaded
// matmul, so the result does not depend on the thread count. Given B as stored, each block's matmul
// first copies it into its own blocked layout; when there are many blocks, B is packed into that
// layout once per call instead (one reorder, the same values). The results stay independent of
// the thread count; against the unpacked form, a 1-row last block can round differently (oneDNN
// picks another kernel for it).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <dnnl.hpp>
#include <exception>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "kernels/cpu/gemm.h"

namespace dl::cpu {

namespace {

constexpr int64_t kRowsPerTask = 64;
// Row blocks from which B is packed once per call. With few blocks the one reorder costs more
// than the copies it saves (backward-weight's 4 blocks of a 16 MB B: measured).
constexpr int64_t kMinTasksToPackB = 16;

struct MatmulKey {
  bool trans_a, trans_b, bias, bf16_in, bf16_out, packed_b;
  int64_t m, n, k, lda, ldb, ldc;
  auto tie() const {
    return std::tie(trans_a, trans_b, bias, bf16_in, bf16_out, packed_b, m, n, k, lda, ldb, ldc);
  }
  bool operator<(const MatmulKey& o) const { return tie() < o.tie(); }
};

struct Matmul {
  dnnl::matmul primitive;
  // b: B as the primitive takes it; with packed_b, the primitive's own layout, which pack_b
  // reorders B as stored (stored_b) into.
  dnnl::memory::desc a, b, stored_b, bias, c, scratchpad;
  dnnl::reorder pack_b;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// OpenMP's thread count set to 1 for the calling thread while it lives (restored on a throw too).
class OneThread {
 public:
  OneThread() : threads_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(threads_); }
  OneThread(const OneThread&) = delete;
  OneThread& operator=(const OneThread&) = delete;

 private:
  int threads_;
};

// The matmul of one row block, made once per shape. It is made for one thread: oneDNN fixes its
// work split (and with it the order of a K-split's sums) when it makes a primitive. Its scratch
// memory is the caller's, one buffer per thread: the threads run one primitive at once, and
// oneDNN's own scratchpad would be shared between them (a race seen as results that changed).
const Matmul& matmul_for(const MatmulKey& key) {
  static std::mutex mutex;
  static std::map<MatmulKey, Matmul> made;
  std::lock_guard lock(mutex);
  auto it = made.find(key);
  if (it != made.end()) return it->second;
  using dt = dnnl::memory::data_type;
  using dims = dnnl::memory::dims;
  const dt in = key.bf16_in ? dt::bf16 : dt::f32;
  Matmul mm;
  mm.a = dnnl::memory::desc({key.m, key.k}, in, key.trans_a ? dims{1, key.lda} : dims{key.lda, 1});
  mm.stored_b =
      dnnl::memory::desc({key.k, key.n}, in, key.trans_b ? dims{1, key.ldb} : dims{key.ldb, 1});
  mm.b = key.packed_b ? dnnl::memory::desc({key.k, key.n}, in, dnnl::memory::format_tag::any)
                      : mm.stored_b;
  if (key.bias) mm.bias = dnnl::memory::desc({1, key.n}, dt::f32, dims{key.n, 1});
  mm.c = dnnl::memory::desc({key.m, key.n}, key.bf16_out ? dt::bf16 : dt::f32, dims{key.ldc, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const OneThread one_thread;
#if DNNL_VERSION_MAJOR >= 3
  const dnnl::matmul::primitive_desc pd(cpu_engine(), mm.a, mm.b, mm.bias, mm.c, attr);
#else
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(mm.a, mm.b, mm.bias, mm.c), attr,
                                        cpu_engine());
#endif
  mm.primitive = dnnl::matmul(pd);
  mm.scratchpad = pd.scratchpad_desc();
  if (key.packed_b) {
    mm.b = pd.weights_desc();
    mm.pack_b =
        dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), mm.stored_b, cpu_engine(), mm.b));
  }
  return made.emplace(key, std::move(mm)).first->second;
}

// The calling thread's buffers, kept from call to call so that a training step's GEMMs allocate
// nothing once each shape has run: each OpenMP thread's scratch, and B packed (for the full blocks
// and, when its layout differs, for the last).
struct Buffers {
  std::vector<std::vector<char>> scratch;
  std::vector<char> packed_full, packed_last;
};

// `buffer` grown (never shrunk) to hold `bytes` from a 64-byte boundary, which it returns.
void* aligned_room(std::vector<char>& buffer, size_t bytes) {
  if (buffer.size() < bytes + 64) buffer.resize(bytes + 64);
  const auto start = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<void*>((start + 63) & ~uintptr_t{63});
}

template <class In, class C>
void gemm_blocks(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const In* a,
                 int64_t lda, const In* b, int64_t ldb, const float* bias, C* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  // An empty sum: C = bias (or 0). oneDNN 2.6 divides by zero making a matmul with K = 0.
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) store(c + i * ldc + j, bias ? bias[j] : 0.0f);
    return;
  }
  constexpr bool bf16_in = std::is_same_v<In, bf16>, bf16_out = std::is_same_v<C, bf16>;
  const int64_t tasks = (m + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t tail = m - (tasks - 1) * kRowsPerTask;
  const bool has_bias = bias != nullptr, pack_b = tasks >= kMinTasksToPackB;
  const Matmul& full = matmul_for({trans_a, trans_b, has_bias, bf16_in, bf16_out, pack_b,
                                   std::min(m, kRowsPerTask), n, k, lda, ldb, ldc});
  const Matmul& last = matmul_for(
      {trans_a, trans_b, has_bias, bf16_in, bf16_out, pack_b, tail, n, k, lda, ldb, ldc});
  // oneDNN's memory objects take non-const handles; it only reads A, B and the bias.
  thread_local Buffers buffers;
  dnnl::memory stored_b(full.stored_b, cpu_engine(), const_cast<In*>(b));
  const auto b_for = [&](const Matmul& mm, std::vector<char>& buffer) {
    if (!pack_b) return stored_b;
    dnnl::memory packed(mm.b, cpu_engine(), aligned_room(buffer, mm.b.get_size()));
    dnnl::stream stream(cpu_engine());
    mm.pack_b.execute(stream, stored_b, packed);
    stream.wait();
    return packed;
  };
  const dnnl::memory full_b = b_for(full, buffers.packed_full);
  const dnnl::memory last_b = last.b == full.b ? full_b : b_for(last, buffers.packed_last);
  void* bias_handle = const_cast<float*>(bias);
  // One scratch buffer per thread, sized here: nothing inside the parallel loop allocates, and an
  // exception there (oneDNN's) is carried out of it and rethrown, not left to end the process.
  std::vector<std::vector<char>>& scratch = buffers.scratch;
  scratch.resize(static_cast<size_t>(omp_get_max_threads()));
  const size_t scratch_bytes = std::max(full.scratchpad.get_size(), last.scratchpad.get_size());
  for (std::vector<char>& s : scratch)
    if (s.size() < scratch_bytes) s.resize(scratch_bytes);
  std::exception_ptr failure;
  std::mutex failure_mutex;
#pragma omp parallel for schedule(dynamic)
  for (int64_t t = 0; t < tasks; ++t) {
    try {
      const Matmul& mm = t + 1 == tasks ? last : full;
      const int64_t row = t * kRowsPerTask;
      void* a_block = const_cast<In*>(trans_a ? a + row : a + row * lda);
      void* b_handle = (t + 1 == tasks ? last_b : full_b).get_data_handle();
      dnnl::stream stream(cpu_engine());
      std::unordered_map<int, dnnl::memory> args{
          {DNNL_ARG_SRC, dnnl::memory(mm.a, cpu_engine(), a_block)},
          {DNNL_ARG_WEIGHTS, dnnl::memory(mm.b, cpu_engine(), b_handle)},
          {DNNL_ARG_DST, dnnl::memory(mm.c, cpu_engine(), c + row * ldc)},
          {DNNL_ARG_SCRATCHPAD,
           dnnl::memory(mm.scratchpad, cpu_engine(), scratch[omp_get_thread_num()].data())}};
      if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(mm.bias, cpu_engine(), bias_handle));
      mm.primitive.execute(stream, args);
      stream.wait();
    } catch (...) {
      std::lock_guard lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

}  // namespace

bool has_bf16_gemm() {
  static const bool available = [] {
    if (!__builtin_cpu_supports("avx512bf16")) return false;
    try {  // oneDNN may still refuse (e.g. ONEDNN_MAX_CPU_ISA below AVX512-BF16)
      matmul_for({false, false, false, true, true, false, 1, 1, 1, 1, 1, 1});
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return available;
}

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, const float* bias, float* c, int64_t ldc) {
  gemm_blocks(trans_a, trans_b, m, n, k, a, lda, b, ldb, bias, c, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const bf16* a, int64_t lda,
          const bf16* b, int64_t ldb, const float* bias, float* c, int64_t ldc) {
  gemm_blocks(trans_a, trans_b, m, n, k, a, lda, b, ldb, bias, c, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const bf16* a, int64_t lda,
          const bf16* b, int64_t ldb, const float* bias, bf16* c, int64_t ldc) {
  gemm_blocks(trans_a, trans_b, m, n, k, a, lda, b, ldb, bias, c, ldc);
}

}  // namespace dl::cpu
