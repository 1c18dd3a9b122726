// The CPU's GEMMs on oneDNN's matmul (its brgemm kernels: AVX-512 FMAs in f32; AVX512-BF16 dot
// products or AMX tiles in bf16), in fixed row blocks of C: each block is one single-threaded
// matmul, so the result does not depend on the thread count (a bf16 GEMM of few rows and a long K
// is split along K instead: see kChunkK). Given B as stored, each block's matmul
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
// A bf16 GEMM with fewer row blocks than that and K of at least two chunks (a weight gradient: C
// is [c_out, c_in], K the batch's pixels) splits K instead: chunks of about kChunkK (at most
// kMaxChunks), each a matmul over all of C's rows into its own f32 partial, and the partials are
// summed in chunk order. Each block of rows would otherwise reorder all of B into the bf16 dot
// products' pair-interleaved layout; each chunk reorders its share once. (In f32 oneDNN reads B
// as stored and the split measured no faster.) The split depends on K alone.
constexpr int64_t kChunkK = 2048;
constexpr int64_t kMaxChunks = 64;

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
// nothing once each shape has run: each OpenMP thread's scratch, B packed (for the full blocks
// and, when its layout differs, for the last), and the partial products of a K split.
struct Buffers {
  std::vector<std::vector<char>> scratch;
  std::vector<char> packed_full, packed_last, partials;
};

Buffers& thread_buffers() {
  thread_local Buffers buffers;
  return buffers;
}

// `buffer` grown (never shrunk) to hold `bytes` from a 64-byte boundary, which it returns.
void* aligned_room(std::vector<char>& buffer, size_t bytes) {
  if (buffer.size() < bytes + 64) buffer.resize(bytes + 64);
  const auto start = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<void*>((start + 63) & ~uintptr_t{63});
}

// Each OpenMP thread's scratch memory, large enough for both matmuls, sized before the parallel
// loop so that nothing inside it allocates.
std::vector<std::vector<char>>& thread_scratch(Buffers& buffers, const Matmul& full,
                                               const Matmul& last) {
  buffers.scratch.resize(static_cast<size_t>(omp_get_max_threads()));
  const size_t bytes = std::max(full.scratchpad.get_size(), last.scratchpad.get_size());
  for (std::vector<char>& s : buffers.scratch)
    if (s.size() < bytes) s.resize(bytes);
  return buffers.scratch;
}

// Runs run(t) for t in [0, tasks) on the OpenMP threads. An exception there (oneDNN's) is carried
// out of the loop and rethrown, not left to end the process.
template <class F>
void for_each_task(int64_t tasks, const F& run) {
  std::exception_ptr failure;
  std::mutex failure_mutex;
#pragma omp parallel for schedule(dynamic)
  for (int64_t t = 0; t < tasks; ++t) {
    try {
      run(t);
    } catch (...) {
      std::lock_guard lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

// One single-threaded matmul: C = A B with the given operands' handles.
void execute(const Matmul& mm, const void* a, const void* b, const float* bias, void* c,
             void* scratch) {
  // oneDNN's memory objects take non-const handles; it only reads A, B and the bias.
  dnnl::stream stream(cpu_engine());
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, dnnl::memory(mm.a, cpu_engine(), const_cast<void*>(a))},
      {DNNL_ARG_WEIGHTS, dnnl::memory(mm.b, cpu_engine(), const_cast<void*>(b))},
      {DNNL_ARG_DST, dnnl::memory(mm.c, cpu_engine(), c)},
      {DNNL_ARG_SCRATCHPAD, dnnl::memory(mm.scratchpad, cpu_engine(), scratch)}};
  if (bias)
    args.emplace(DNNL_ARG_BIAS, dnnl::memory(mm.bias, cpu_engine(), const_cast<float*>(bias)));
  mm.primitive.execute(stream, args);
  stream.wait();
}

// C = bias + op(A) op(B) with K split into `chunks` (see kChunkK): chunk q covers K from q * step
// on, each into its own m x n f32 partial; C[i][j] = bias[j] + the partials' sum in chunk order.
template <class In, class C>
void gemm_k_chunks(int64_t chunks, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                   const In* a, int64_t lda, const In* b, int64_t ldb, const float* bias, C* c,
                   int64_t ldc) {
  constexpr bool bf16_in = std::is_same_v<In, bf16>;
  const int64_t step = (k + chunks - 1) / chunks, tail = k - (chunks - 1) * step;
  const Matmul& full =
      matmul_for({trans_a, trans_b, false, bf16_in, false, false, m, n, step, lda, ldb, n});
  const Matmul& last =
      matmul_for({trans_a, trans_b, false, bf16_in, false, false, m, n, tail, lda, ldb, n});
  Buffers& buffers = thread_buffers();
  std::vector<std::vector<char>>& scratch = thread_scratch(buffers, full, last);
  auto* partials = static_cast<float*>(
      aligned_room(buffers.partials, static_cast<size_t>(chunks * m * n) * sizeof(float)));
  for_each_task(chunks, [&](int64_t q) {
    const int64_t k0 = q * step;
    execute(q + 1 == chunks ? last : full, trans_a ? a + k0 * lda : a + k0,
            trans_b ? b + k0 : b + k0 * ldb, nullptr, partials + q * m * n,
            scratch[omp_get_thread_num()].data());
  });
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float sum = partials[i * n + j];
      for (int64_t q = 1; q < chunks; ++q) sum += partials[(q * m + i) * n + j];
      store(c + i * ldc + j, bias ? sum + bias[j] : sum);
    }
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
  const int64_t chunks = std::min((k + kChunkK - 1) / kChunkK, kMaxChunks);
  if (bf16_in && tasks < kMinTasksToPackB && chunks >= 2)
    return gemm_k_chunks(chunks, trans_a, trans_b, m, n, k, a, lda, b, ldb, bias, c, ldc);
  const int64_t tail = m - (tasks - 1) * kRowsPerTask;
  const bool has_bias = bias != nullptr, pack_b = tasks >= kMinTasksToPackB;
  const Matmul& full = matmul_for({trans_a, trans_b, has_bias, bf16_in, bf16_out, pack_b,
                                   std::min(m, kRowsPerTask), n, k, lda, ldb, ldc});
  const Matmul& last = matmul_for(
      {trans_a, trans_b, has_bias, bf16_in, bf16_out, pack_b, tail, n, k, lda, ldb, ldc});
  Buffers& buffers = thread_buffers();
  // oneDNN's memory objects take non-const handles; it only reads B.
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
  std::vector<std::vector<char>>& scratch = thread_scratch(buffers, full, last);
  for_each_task(tasks, [&](int64_t t) {
    const bool is_last = t + 1 == tasks;
    const int64_t row = t * kRowsPerTask;
    execute(is_last ? last : full, trans_a ? a + row : a + row * lda,
            (is_last ? last_b : full_b).get_data_handle(), bias, c + row * ldc,
            scratch[omp_get_thread_num()].data());
  });
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
