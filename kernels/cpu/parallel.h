// Thread count of the CPU kernels (OpenMP; the GEMM runs single-threaded BLAS calls in them).
#pragma once

namespace dl::cpu {

// Sets the threads used by the CPU kernels (n <= 0 keeps the current count). Results never depend
// on the count: work is split into fixed blocks and reductions are summed in a fixed order.
void set_num_threads(int n);
int num_threads();

}  // namespace dl::cpu
