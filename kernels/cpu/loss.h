// Softmax cross-entropy on the CPU, PyTorch's semantics: mean over the batch; with label smoothing
// eps the target is (1 - eps) * one_hot + eps / classes.
#pragma once
#include <cstdint>

namespace dl::cpu {

// Returns the mean loss; writes the softmax probabilities [n, classes] for the backward.
double cross_entropy_forward(const float* logits, const int64_t* labels, int64_t n, int64_t classes,
                             float label_smoothing, float* probs);
// dlogits = dloss * (probs - target) / n.
void cross_entropy_backward(const float* probs, const int64_t* labels, int64_t n, int64_t classes,
                            float label_smoothing, float dloss, float* dlogits);

}  // namespace dl::cpu
