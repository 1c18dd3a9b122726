// Thread count shared by the CPU kernels (OpenMP) and the CPU GEMM (OpenBLAS).
#pragma once

namespace dl::cpu {

// Sets the threads used by every CPU kernel and by the BLAS. n <= 0 keeps the current count.
void set_num_threads(int n);
int num_threads();

}  // namespace dl::cpu
