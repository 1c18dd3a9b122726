// Row-major GEMMs of Linear and the pointwise (1x1, stride 1) convolution on the GPU, through
// cuBLASLt. X is [m, k] (m = N*H*W rows of an NHWC activation, or a batch), W is [n, k] (PyTorch's
// Linear weight [out, in], and the conv weight [c_out, c_in, 1, 1]), Y is [m, n]:
//   forward          Y  = X W^T (+ bias[n])
//   backward_data    dX = dY W
//   backward_weight  dW = dY^T X, dbias[n] = sum over the m rows of dY
// Inputs are fp32 (exact fp32 math, or TF32 tensor cores when allowed) or bf16; accumulation is
// always fp32. Gradient rule: outputs are overwritten (=, beta = 0).
//
// The mapping onto column-major cuBLASLt: a row-major [r, c] matrix with row stride c is the
// column-major [c, r] matrix, its transpose, with ld = c. So row-major C = A B^T is column-major
// C^T = B A^T, i.e. cuBLASLt's (A, B) are our (B, A):
//   forward          Y^T [n, m] = op_T(W^T [k, n]) X^T [k, m]    transa T, transb N, (n, m, k)
//                    bias over the rows of Y^T (n of them): CUBLASLT_EPILOGUE_BIAS
//   backward_data    dX^T [k, m] = W^T [k, n] dY^T [n, m]        transa N, transb N, (k, m, n)
//   backward_weight  dW^T [k, n] = X^T [k, m] op_T(dY^T [n, m])  transa N, transb T, (k, n, m)
//                    dbias[j] = sum over the GEMM's k dimension (our m rows) of cuBLASLt's
//                    B = dY, one value per column of D (n of them): CUBLASLT_EPILOGUE_BGRADB
//                    (BGRADA would reduce A = X^T and give k values: the wrong vector).
// Where cuBLASLt offers no algorithm with BGRADB for a shape and type, backward_weight runs the
// plain GEMM and sum_rows (kernels/cuda/elementwise.cuh) for dbias instead; both are deterministic.
//
// GELU epilogues (CUBLASLT_EPILOGUE_GELU and the like) are not offered: they compute the tanh
// approximation of GELU, and the model uses the exact erf form (docs/perf_notes.md has the
// evidence).
//
// Plans (matmul descriptor, layouts, heuristic algorithm) are cached per (operation, m, n, k,
// types, TF32, bias, pointer alignment): the first call of a shape queries the heuristic (host
// work only, no allocation), later calls reuse it, so steady-state calls and CUDA Graph capture
// allocate nothing. An LtGemm is not thread-safe: one per thread (or guard it).
#pragma once
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace dl::cuda {

// Element type of a matrix in memory.
enum class GemmType { f32, bf16 };

class LtGemm {
 public:
  // Workspace cuBLASLt recommends for Hopper (32 MiB); smaller ones restrict the algorithms.
  static constexpr size_t kRecommendedWorkspace = size_t{32} << 20;

  // handle: the caller's cuBLASLt handle (it outlives this object). workspace: device memory of
  // workspace_bytes used by every call, in stream order (calls on different streams need
  // different LtGemm objects). allow_tf32: fp32 inputs may use TF32 tensor cores.
  LtGemm(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes, bool allow_tf32);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  void set_allow_tf32(bool allow) { allow_tf32_ = allow; }
  bool allow_tf32() const { return allow_tf32_; }
  // Plans built so far (for tests and logs).
  size_t cached_plans() const;

  // y[m, n] = x[m, k] w[n, k]^T (+ bias[n], if non-null). x and w are `in`; y and the bias are
  // `out` (bf16 only with bf16 inputs). With a bf16 y and a bias, cuBLASLt rounds twice (seen on an
  // H100 with CUDA 13.0: errors up to one bf16 ulp): the bias is not added before one rounding.
  void forward(const void* x, const void* w, const void* bias, void* y, int64_t m, int64_t n,
               int64_t k, GemmType in, GemmType out, cudaStream_t stream);
  // dx[m, k] = dy[m, n] w[n, k]. dy and w are `in`, dx is `out`.
  void backward_data(const void* dy, const void* w, void* dx, int64_t m, int64_t n, int64_t k,
                     GemmType in, GemmType out, cudaStream_t stream);
  // dw[n, k] = dy[m, n]^T x[m, k] and, if dbias is non-null, dbias[n] = sum_r dy[r, :]. dy and x
  // are `in`; dw and dbias are fp32 (master-weight gradients).
  void backward_weight(const void* dy, const void* x, float* dw, float* dbias, int64_t m, int64_t n,
                       int64_t k, GemmType in, cudaStream_t stream);

 private:
  struct Cache;

  cublasLtHandle_t handle_;
  void* workspace_;
  size_t workspace_bytes_;
  bool allow_tf32_;
  std::unique_ptr<Cache> cache_;
};

}  // namespace dl::cuda
