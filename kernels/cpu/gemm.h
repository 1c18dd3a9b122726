// Row-major single-precision GEMM: C = alpha * op(A) * op(B) + beta * C, backed by the BLAS.
// op(A) is M x K, op(B) is K x N, C is M x N; lda/ldb/ldc are row strides of the stored matrices.
#pragma once
#include <cstdint>

namespace dl::cpu {

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace dl::cpu
