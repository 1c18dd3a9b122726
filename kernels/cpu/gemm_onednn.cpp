// The CPU's GEMMs on oneDNN's matmul (its brgemm kernels: AVX-512 FMAs in f32; AVX512-BF16 dot
// products or AMX tiles in bf16), in fixed row blocks of C: each block is one single-threaded
// matmul, so the result does not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <dnnl.hpp>
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

struct MatmulKey {
  bool trans_a, trans_b, bias, bf16_in, bf16_out;
  int64_t m, n, k, lda, ldb, ldc;
  auto tie() const {
    return std::tie(trans_a, trans_b, bias, bf16_in, bf16_out, m, n, k, lda, ldb, ldc);
  }
  bool operator<(const MatmulKey& o) const { return tie() < o.tie(); }
};

struct Matmul {
  dnnl::matmul primitive;
  dnnl::memory::desc a, b, bias, c, scratchpad;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

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
  mm.b = dnnl::memory::desc({key.k, key.n}, in, key.trans_b ? dims{1, key.ldb} : dims{key.ldb, 1});
  if (key.bias) mm.bias = dnnl::memory::desc({1, key.n}, dt::f32, dims{key.n, 1});
  mm.c = dnnl::memory::desc({key.m, key.n}, key.bf16_out ? dt::bf16 : dt::f32, dims{key.ldc, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
#if DNNL_VERSION_MAJOR >= 3
  const dnnl::matmul::primitive_desc pd(cpu_engine(), mm.a, mm.b, mm.bias, mm.c, attr);
#else
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(mm.a, mm.b, mm.bias, mm.c), attr,
                                        cpu_engine());
#endif
  omp_set_num_threads(threads);
  mm.primitive = dnnl::matmul(pd);
  mm.scratchpad = pd.scratchpad_desc();
  return made.emplace(key, std::move(mm)).first->second;
}

template <class In, class C>
void gemm_blocks(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const In* a,
                 int64_t lda, const In* b, int64_t ldb, const float* bias, C* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  constexpr bool bf16_in = std::is_same_v<In, bf16>, bf16_out = std::is_same_v<C, bf16>;
  const int64_t tasks = (m + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t tail = m - (tasks - 1) * kRowsPerTask;
  const bool has_bias = bias != nullptr;
  const Matmul& full = matmul_for({trans_a, trans_b, has_bias, bf16_in, bf16_out,
                                   std::min(m, kRowsPerTask), n, k, lda, ldb, ldc});
  const Matmul& last =
      matmul_for({trans_a, trans_b, has_bias, bf16_in, bf16_out, tail, n, k, lda, ldb, ldc});
  // oneDNN's memory objects take non-const handles; it only reads A, B and the bias.
  void* b_handle = const_cast<In*>(b);
  void* bias_handle = const_cast<float*>(bias);
#pragma omp parallel for schedule(dynamic)
  for (int64_t t = 0; t < tasks; ++t) {
    const Matmul& mm = t + 1 == tasks ? last : full;
    const int64_t row = t * kRowsPerTask;
    void* a_block = const_cast<In*>(trans_a ? a + row : a + row * lda);
    thread_local std::vector<char> scratch;
    scratch.resize(std::max(scratch.size(), mm.scratchpad.get_size()));
    dnnl::stream stream(cpu_engine());
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, dnnl::memory(mm.a, cpu_engine(), a_block)},
        {DNNL_ARG_WEIGHTS, dnnl::memory(mm.b, cpu_engine(), b_handle)},
        {DNNL_ARG_DST, dnnl::memory(mm.c, cpu_engine(), c + row * ldc)},
        {DNNL_ARG_SCRATCHPAD, dnnl::memory(mm.scratchpad, cpu_engine(), scratch.data())}};
    if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(mm.bias, cpu_engine(), bias_handle));
    mm.primitive.execute(stream, args);
    stream.wait();
  }
}

}  // namespace

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
