// Reverse-mode autograd. Each differentiable op records one Node on its output; backward() walks
// the nodes in reverse topological order, hands each its output gradient, and routes the input
// gradients it returns to the producing nodes or, for leaves, into `.grad` (+=).
#pragma once
#include <functional>
#include <initializer_list>
#include <memory>
#include <vector>

#include "engine/tensor.h"

namespace dl {

class Node {
 public:
  using Backward = std::function<std::vector<Tensor>(const Tensor& grad_output)>;
  Node(const char* name, Backward backward) : name_(name), backward_(std::move(backward)) {}

  const char* name() const { return name_; }
  // Remembers the version of t's memory now; apply() refuses to run if it has changed.
  void save_version(const Tensor& t);
  // One gradient per input, in the order given to record(); undefined where none is needed.
  // Throws dl::Error if a tensor the backward reads was modified in place since the forward.
  std::vector<Tensor> apply(const Tensor& grad_output);
  // Frees the saved tensors and the links to the inputs.
  void release();
  bool released() const { return !backward_; }

  // Autograd state of each input (null where the input needs no gradient).
  std::vector<std::shared_ptr<AutogradMeta>> inputs;

 private:
  struct SavedVersion {
    std::shared_ptr<Storage> storage;
    uint64_t version;
  };
  const char* name_;
  Backward backward_;
  std::vector<SavedVersion> saved_;
};

// True when grad mode is on and any of the tensors requires grad.
bool any_requires_grad(std::initializer_list<Tensor> tensors);

// Makes `output` the result of a differentiable op over `inputs`. Does nothing when no input
// needs a gradient or grad mode is off. The backward closure must capture only detached tensors
// (Tensor::detach) so no reference cycle forms through the output. `saved` lists the tensors the
// backward reads whose memory a caller could write in place (inputs, weights; not the op's own
// intermediates): writing one before the backward makes the backward throw, as PyTorch does.
void record(Tensor& output, const char* name, std::initializer_list<Tensor> inputs,
            Node::Backward backward, std::initializer_list<Tensor> saved = {});

// Which inputs of the node being recorded need a gradient (for skipping work in backward).
std::vector<bool> needs_grad(std::initializer_list<Tensor> inputs);

}  // namespace dl
