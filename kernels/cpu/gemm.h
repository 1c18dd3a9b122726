// Row-major GEMMs: C = alpha * op(A) * op(B) + beta * C in f32 (OpenBLAS), and C = op(A) * op(B)
// (+ bias) on bf16 inputs with f32 accumulation (oneDNN). op(A) is M x K, op(B) is K x N, C is M x
// N; lda/ldb/ldc are row strides of the stored matrices. Both split C into fixed row blocks, so
// results never depend on the thread count.
#pragma once
#include <cstdint>

#include "kernels/cpu/bf16.h"

namespace dl::cpu {

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// C = op(A) * op(B), plus bias[j] on every row when bias is not null; C f32, or bf16 rounded once.
void gemm_bf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const bf16* a,
               int64_t lda, const bf16* b, int64_t ldb, const float* bias, float* c, int64_t ldc);
void gemm_bf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const bf16* a,
               int64_t lda, const bf16* b, int64_t ldb, const float* bias, bf16* c, int64_t ldc);

}  // namespace dl::cpu
