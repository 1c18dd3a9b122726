// Row-major GEMMs on oneDNN: C = op(A) * op(B), plus bias[j] on every row when bias is not null.
// op(A) is M x K, op(B) is K x N, C is M x N; lda/ldb/ldc are row strides of the stored matrices.
// A and B are f32 (C f32), or bf16 with f32 accumulation (C f32, or bf16 rounded once). C is split
// into fixed row blocks (a bf16 GEMM of few rows and a long K: K into fixed chunks whose partial
// products are summed in order), so results never depend on the thread count.
#pragma once
#include <cstdint>

#include "kernels/cpu/bf16.h"

namespace dl::cpu {

// Whether bf16 GEMMs run on this CPU at the bf16 dot-product rate: it has AVX512-BF16 and oneDNN
// uses it (a probe matmul is made once).
bool has_bf16_gemm();

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, const float* bias, float* c, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const bf16* a, int64_t lda,
          const bf16* b, int64_t ldb, const float* bias, float* c, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const bf16* a, int64_t lda,
          const bf16* b, int64_t ldb, const float* bias, bf16* c, int64_t ldc);

}  // namespace dl::cpu
