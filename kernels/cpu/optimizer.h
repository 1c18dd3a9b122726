// Optimizer updates on the CPU with PyTorch's formulas (torch.optim.SGD / AdamW, foreach=False),
// one element at a time. Compiled with -ffp-contract=off: every float operation is rounded on its
// own, in the order written, as PyTorch's and the CUDA kernels' are (kernels/cuda/optimizer.cuh).
#pragma once
#include <cstdint>

namespace dl::cpu {

// g = grad + wd p (when wd != 0); with a momentum buffer (buf non-null): buf = first ? g :
// momentum buf + (1 - dampening) g, g = nesterov ? g + momentum buf : buf; then p -= lr g.
void sgd_update(float* p, const float* grad, float* buf, int64_t n, float lr, float wd,
                float momentum, float one_minus_dampening, bool nesterov, bool first);

// p *= decay; m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
// p -= step_size (m / (sqrt(v) / bias_correction2_sqrt + eps)).
// one_minus_beta1/2 come from double (as PyTorch's Python scalars): 1 - 0.999f in float is off by
// 1.3e-5 relative, which shows in every step.
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, float decay, float beta1,
                  float one_minus_beta1, float beta2, float one_minus_beta2, float step_size,
                  float bias_correction2_sqrt, float eps);

}  // namespace dl::cpu
