#include "kernels/cpu/gemm.h"

#include <cblas.h>

#include <algorithm>

namespace dl::cpu {

namespace {
// Rows of C per task. Each task is one single-threaded BLAS call over a fixed block of rows, so a
// result never depends on how many threads run (a multi-threaded BLAS splits the work by its
// thread count, and its float results change with it).
constexpr int64_t kRowsPerTask = 64;
}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  // OpenMP OpenBLAS runs single-threaded inside a parallel region on its own; the pthread build
  // must be told (telling the OpenMP build would also set OpenMP's thread count).
  static const bool blas_single_threaded =
      openblas_get_parallel() != 1 || (openblas_set_num_threads(1), true);
  (void)blas_single_threaded;
  const int64_t tasks = (m + kRowsPerTask - 1) / kRowsPerTask;
#pragma omp parallel for schedule(dynamic)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t row = t * kRowsPerTask, rows = std::min(kRowsPerTask, m - row);
    // Row block of op(A): rows of A, or columns of A when it is transposed.
    const float* a_block = trans_a ? a + row : a + row * lda;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(rows),
                static_cast<blasint>(n), static_cast<blasint>(k), alpha, a_block,
                static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c + row * ldc,
                static_cast<blasint>(ldc));
  }
}

}  // namespace dl::cpu
