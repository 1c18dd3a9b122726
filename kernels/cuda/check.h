// Checks for CUDA runtime, cuDNN and cuBLAS calls, and for kernel-launcher preconditions.
// Each macro evaluates its argument once; a failure throws a std::runtime_error
// (std::invalid_argument for a precondition) that names the library's own error, the statement, the
// function, file and line. The engine's dl::Error derives from std::runtime_error, so callers catch
// one type. Only the CUDA runtime header is included here: DL_CUDNN_CHECK and DL_CUBLAS_CHECK name
// the cuDNN and cuBLAS types where they are expanded, in files that already include those
// libraries.
#pragma once
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace dl::cuda::detail {

[[noreturn]] inline void throw_call_error(const char* library, const char* error,
                                          const char* statement, const char* function,
                                          const char* file, int line) {
  throw std::runtime_error(std::string(library) + " error: " + error + "\n  in `" + statement +
                           "`\n  at " + function + " (" + file + ":" + std::to_string(line) + ")");
}

[[noreturn]] inline void throw_precondition(const char* condition, const std::string& message,
                                            const char* function, const char* file, int line) {
  throw std::invalid_argument(std::string(function) + ": " + message + " (failed: " + condition +
                              ", " + file + ":" + std::to_string(line) + ")");
}

inline std::string cuda_error_text(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
}

}  // namespace dl::cuda::detail

#define DL_CUDA_CHECK(statement)                                                                 \
  do {                                                                                           \
    const cudaError_t dl_status_ = (statement);                                                  \
    if (dl_status_ != cudaSuccess)                                                               \
      ::dl::cuda::detail::throw_call_error(                                                      \
          "CUDA", ::dl::cuda::detail::cuda_error_text(dl_status_).c_str(), #statement, __func__, \
          __FILE__, __LINE__);                                                                   \
  } while (0)

#define DL_CUDNN_CHECK(statement)                                                                \
  do {                                                                                           \
    const cudnnStatus_t dl_status_ = (statement);                                                \
    if (dl_status_ != CUDNN_STATUS_SUCCESS)                                                      \
      ::dl::cuda::detail::throw_call_error("cuDNN", cudnnGetErrorString(dl_status_), #statement, \
                                           __func__, __FILE__, __LINE__);                        \
  } while (0)

#define DL_CUBLAS_CHECK(statement)                                                      \
  do {                                                                                  \
    const cublasStatus_t dl_status_ = (statement);                                      \
    if (dl_status_ != CUBLAS_STATUS_SUCCESS)                                            \
      ::dl::cuda::detail::throw_call_error("cuBLAS", cublasGetStatusString(dl_status_), \
                                           #statement, __func__, __FILE__, __LINE__);   \
  } while (0)

// DL_CUDA_REQUIRE(cond, message): a launcher's precondition; `message` may be a std::string.
#define DL_CUDA_REQUIRE(condition, message)                                                        \
  do {                                                                                             \
    if (!(condition))                                                                              \
      ::dl::cuda::detail::throw_precondition(#condition, (message), __func__, __FILE__, __LINE__); \
  } while (0)

// After every kernel launch: reports a bad launch configuration at the launch site.
#define DL_CUDA_CHECK_LAUNCH() DL_CUDA_CHECK(cudaGetLastError())
