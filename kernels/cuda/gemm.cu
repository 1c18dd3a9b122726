// cuBLASLt GEMM wrappers for Linear and the pointwise conv: cached plans, bias/bias-grad epilogues.
#include "kernels/cuda/gemm.cuh"

#include <cuda_bf16.h>

#include <initializer_list>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>

#include "kernels/cuda/check.h"
#include "kernels/cuda/elementwise.cuh"

namespace dl::cuda {

namespace {

enum class GemmOp { forward, backward_data, backward_weight };

cudaDataType_t data_type(GemmType t) {
  return t == GemmType::f32 ? CUDA_R_32F : CUDA_R_16BF;
}
const char* type_name(GemmType t) {
  return t == GemmType::f32 ? "f32" : "bf16";
}
const char* op_name(GemmOp op) {
  switch (op) {
    case GemmOp::forward:
      return "forward";
    case GemmOp::backward_data:
      return "backward_data";
    case GemmOp::backward_weight:
      return "backward_weight";
  }
  return "?";
}

// The column-major problem of each row-major operation (see gemm.cuh): transposes and the stored
// (rows, cols) of cuBLASLt's A, B and D, each packed (ld = rows).
struct Geometry {
  cublasOperation_t trans_a, trans_b;
  int64_t a_rows, a_cols, b_rows, b_cols, d_rows, d_cols;
};

Geometry geometry(GemmOp op, int64_t m, int64_t n, int64_t k) {
  switch (op) {
    case GemmOp::forward:  // A = W^T [k, n] (op T), B = X^T [k, m], D = Y^T [n, m]
      return {CUBLAS_OP_T, CUBLAS_OP_N, k, n, k, m, n, m};
    case GemmOp::backward_data:  // A = W^T [k, n], B = dY^T [n, m], D = dX^T [k, m]
      return {CUBLAS_OP_N, CUBLAS_OP_N, k, n, n, m, k, m};
    case GemmOp::backward_weight:  // A = X^T [k, m], B = dY^T [n, m] (op T), D = dW^T [k, n]
      return {CUBLAS_OP_N, CUBLAS_OP_T, k, m, n, m, k, n};
  }
  throw std::logic_error("unknown GEMM operation");
}

// The largest power of two, at most 256, that divides every non-null pointer: the alignment the
// heuristic may assume (its default is 256, which a view into a tensor need not have).
uint32_t common_alignment(std::initializer_list<const void*> pointers) {
  uintptr_t bits = 256;
  for (const void* p : pointers) bits |= reinterpret_cast<uintptr_t>(p);
  return static_cast<uint32_t>(bits & (~bits + 1));
}

void check_sizes(int64_t m, int64_t n, int64_t k) {
  DL_CUDA_REQUIRE(m >= 0 && n >= 0 && k > 0, "GEMM sizes must be m, n >= 0 and k > 0");
}

}  // namespace

struct LtGemm::Cache {
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulPreference_t preference = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool has_bias = false;
    bool found = false;  // the heuristic returned an algorithm

    Plan() = default;
    Plan(const Plan&) = delete;
    Plan& operator=(const Plan&) = delete;
    ~Plan() {
      if (preference) cublasLtMatmulPreferenceDestroy(preference);
      if (d) cublasLtMatrixLayoutDestroy(d);
      if (b) cublasLtMatrixLayoutDestroy(b);
      if (a) cublasLtMatrixLayoutDestroy(a);
      if (desc) cublasLtMatmulDescDestroy(desc);
    }
  };
  // (operation, m, n, k, input type, output type, TF32, epilogue, alignment)
  using Key = std::tuple<int, int64_t, int64_t, int64_t, int, int, bool, int, uint32_t>;

  std::map<Key, std::unique_ptr<Plan>> plans;

  // The cached plan, built on first use. `bias` is the call's bias pointer: the heuristic reads
  // its alignment.
  Plan& get(cublasLtHandle_t handle, size_t workspace_bytes, GemmOp op, int64_t m, int64_t n,
            int64_t k, GemmType in, GemmType out, bool tf32, cublasLtEpilogue_t epilogue,
            const void* bias, uint32_t alignment) {
    const Key key{static_cast<int>(op),
                  m,
                  n,
                  k,
                  static_cast<int>(in),
                  static_cast<int>(out),
                  tf32,
                  static_cast<int>(epilogue),
                  alignment};
    auto it = plans.find(key);
    if (it == plans.end()) {
      it = plans
               .emplace(key, build(handle, workspace_bytes, op, m, n, k, in, out, tf32, epilogue,
                                   bias, alignment))
               .first;
    }
    return *it->second;
  }

  static std::unique_ptr<Plan> build(cublasLtHandle_t handle, size_t workspace_bytes, GemmOp op,
                                     int64_t m, int64_t n, int64_t k, GemmType in, GemmType out,
                                     bool tf32, cublasLtEpilogue_t epilogue, const void* bias,
                                     uint32_t alignment) {
    auto plan = std::make_unique<Plan>();
    const Geometry g = geometry(op, m, n, k);
    const cublasComputeType_t compute =
        tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;  // bf16: fp32 accumulation
    DL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, compute, CUDA_R_32F));
    const int32_t trans_a = g.trans_a, trans_b = g.trans_b;
    DL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                   &trans_a, sizeof(trans_a)));
    DL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                   &trans_b, sizeof(trans_b)));
    if (epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
      const uint32_t epi = epilogue;
      const int32_t bias_type = data_type(out);
      DL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                     &epi, sizeof(epi)));
      DL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
          plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
      DL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                     &bias, sizeof(bias)));
      plan->has_bias = true;
    }
    DL_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&plan->a, data_type(in), g.a_rows, g.a_cols, g.a_rows));
    DL_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&plan->b, data_type(in), g.b_rows, g.b_cols, g.b_rows));
    DL_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&plan->d, data_type(out), g.d_rows, g.d_cols, g.d_rows));
    DL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&plan->preference));
    const uint64_t max_workspace = workspace_bytes;
    DL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(plan->preference,
                                                         CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &max_workspace, sizeof(max_workspace)));
    for (const cublasLtMatmulPreferenceAttributes_t attribute :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
      DL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(plan->preference, attribute, &alignment,
                                                           sizeof(alignment)));
    }
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->a, plan->b, plan->d, plan->d,
                                       plan->preference, 1, &result, &count);
    if (status != CUBLAS_STATUS_NOT_SUPPORTED) DL_CUBLAS_CHECK(status);
    plan->found =
        status == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (plan->found) plan->algo = result.algo;
    return plan;
  }

  // Queues the GEMM of `plan` on `stream`; `bias` is the bias (gradient) pointer of its epilogue.
  static void run(cublasLtHandle_t handle, Plan& plan, const void* a, const void* b, void* d,
                  void* bias, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    if (plan.has_bias) {
      DL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                     &bias, sizeof(bias)));
    }
    const float alpha = 1.0f, beta = 0.0f;
    DL_CUBLAS_CHECK(cublasLtMatmul(handle, plan.desc, &alpha, a, plan.a, b, plan.b, &beta, d,
                                   plan.d, d, plan.d, &plan.algo, workspace, workspace_bytes,
                                   stream));
  }
};

namespace {

[[noreturn]] void throw_no_algorithm(GemmOp op, int64_t m, int64_t n, int64_t k, GemmType in,
                                     GemmType out, bool tf32, uint32_t alignment) {
  throw std::runtime_error(
      std::string("cuBLASLt has no algorithm for the ") + op_name(op) +
      " GEMM m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
      " (" + type_name(in) + " -> " + type_name(out) + (tf32 ? ", TF32" : "") +
      ", pointers aligned to " + std::to_string(alignment) +
      " bytes). HINT: a larger workspace or 16-byte aligned buffers widen the choice.");
}

}  // namespace

LtGemm::LtGemm(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes, bool allow_tf32)
    : handle_(handle),
      workspace_(workspace),
      workspace_bytes_(workspace_bytes),
      allow_tf32_(allow_tf32),
      cache_(std::make_unique<Cache>()) {
  DL_CUDA_REQUIRE(handle != nullptr, "cuBLASLt handle is null");
  DL_CUDA_REQUIRE(workspace != nullptr || workspace_bytes == 0, "workspace is null");
}

LtGemm::~LtGemm() = default;

size_t LtGemm::cached_plans() const {
  return cache_->plans.size();
}

void LtGemm::forward(const void* x, const void* w, const void* bias, void* y, int64_t m, int64_t n,
                     int64_t k, GemmType in, GemmType out, cudaStream_t stream) {
  check_sizes(m, n, k);
  DL_CUDA_REQUIRE(in == GemmType::bf16 || out == GemmType::f32, "fp32 inputs give an fp32 output");
  if (m == 0 || n == 0) return;
  const bool tf32 = allow_tf32_ && in == GemmType::f32;
  const uint32_t alignment = common_alignment({x, w, y, bias});
  const cublasLtEpilogue_t epilogue = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  Cache::Plan& plan = cache_->get(handle_, workspace_bytes_, GemmOp::forward, m, n, k, in, out,
                                  tf32, epilogue, bias, alignment);
  if (!plan.found) throw_no_algorithm(GemmOp::forward, m, n, k, in, out, tf32, alignment);
  Cache::run(handle_, plan, w, x, y, const_cast<void*>(bias), workspace_, workspace_bytes_, stream);
}

void LtGemm::backward_data(const void* dy, const void* w, void* dx, int64_t m, int64_t n, int64_t k,
                           GemmType in, GemmType out, cudaStream_t stream) {
  check_sizes(m, n, k);
  DL_CUDA_REQUIRE(in == GemmType::bf16 || out == GemmType::f32, "fp32 inputs give an fp32 output");
  if (m == 0) return;
  const bool tf32 = allow_tf32_ && in == GemmType::f32;
  const uint32_t alignment = common_alignment({dy, w, dx});
  if (n == 0) {
    DL_CUDA_CHECK(cudaMemsetAsync(
        dx, 0, static_cast<size_t>(m * k) * (out == GemmType::f32 ? 4 : 2), stream));
    return;
  }
  Cache::Plan& plan = cache_->get(handle_, workspace_bytes_, GemmOp::backward_data, m, n, k, in,
                                  out, tf32, CUBLASLT_EPILOGUE_DEFAULT, nullptr, alignment);
  if (!plan.found) throw_no_algorithm(GemmOp::backward_data, m, n, k, in, out, tf32, alignment);
  Cache::run(handle_, plan, w, dy, dx, nullptr, workspace_, workspace_bytes_, stream);
}

void LtGemm::backward_weight(const void* dy, const void* x, float* dw, float* dbias, int64_t m,
                             int64_t n, int64_t k, GemmType in, cudaStream_t stream) {
  check_sizes(m, n, k);
  if (n == 0) return;
  if (m == 0) {
    DL_CUDA_CHECK(cudaMemsetAsync(dw, 0, static_cast<size_t>(n * k) * sizeof(float), stream));
    if (dbias)
      DL_CUDA_CHECK(cudaMemsetAsync(dbias, 0, static_cast<size_t>(n) * sizeof(float), stream));
    return;
  }
  const GemmType out = GemmType::f32;
  const bool tf32 = allow_tf32_ && in == GemmType::f32;
  const uint32_t alignment = common_alignment({dy, x, dw, dbias});
  Cache::Plan* plan = nullptr;
  if (dbias) {
    plan = &cache_->get(handle_, workspace_bytes_, GemmOp::backward_weight, m, n, k, in, out, tf32,
                        CUBLASLT_EPILOGUE_BGRADB, dbias, alignment);
  }
  const bool fused_bias = plan && plan->found;
  if (!fused_bias) {
    plan = &cache_->get(handle_, workspace_bytes_, GemmOp::backward_weight, m, n, k, in, out, tf32,
                        CUBLASLT_EPILOGUE_DEFAULT, nullptr, alignment);
  }
  if (!plan->found) throw_no_algorithm(GemmOp::backward_weight, m, n, k, in, out, tf32, alignment);
  DL_CUDA_REQUIRE(
      dbias == nullptr || fused_bias || sum_rows_workspace_bytes(m, n) <= workspace_bytes_,
      "the workspace is too small for the bias gradient fallback");
  Cache::run(handle_, *plan, x, dy, dw, fused_bias ? dbias : nullptr, workspace_, workspace_bytes_,
             stream);
  if (dbias == nullptr || fused_bias) return;
  if (in == GemmType::f32) {
    sum_rows(static_cast<const float*>(dy), m, n, dbias, workspace_, stream);
  } else {
    sum_rows(static_cast<const __nv_bfloat16*>(dy), m, n, dbias, workspace_, stream);
  }
}

}  // namespace dl::cuda
