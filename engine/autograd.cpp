#include "engine/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "engine/error.h"
#include "engine/ops.h"

namespace dl {

void Node::save_version(const Tensor& t) {
  if (t.defined()) saved_.push_back({t.impl().storage, t.impl().storage->version()});
}

std::vector<Tensor> Node::apply(const Tensor& grad_output) {
  DL_CHECK(backward_, "backward through a graph that was already released (node '", name_,
           "'): run the forward again before a second backward");
  for (const SavedVersion& s : saved_)
    DL_CHECK(s.storage->version() == s.version, "backward of '", name_,
             "': a tensor it needs was modified in place after the forward (version ", s.version,
             ", now ", s.storage->version(),
             "); an in-place write (copy_, fill_, add_, an optimizer step) came between the "
             "forward and this backward");
  return backward_(grad_output);
}

void Node::release() {
  backward_ = nullptr;
  inputs.clear();
  saved_.clear();
}

bool any_requires_grad(std::initializer_list<Tensor> tensors) {
  if (!grad_mode_enabled()) return false;
  for (const Tensor& t : tensors)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

std::vector<bool> needs_grad(std::initializer_list<Tensor> inputs) {
  std::vector<bool> out;
  for (const Tensor& t : inputs)
    out.push_back(grad_mode_enabled() && t.defined() && t.requires_grad());
  return out;
}

void record(Tensor& output, const char* name, std::initializer_list<Tensor> inputs,
            Node::Backward backward, std::initializer_list<Tensor> saved) {
  if (!any_requires_grad(inputs)) return;
  auto node = std::make_shared<Node>(name, std::move(backward));
  for (const Tensor& t : saved) node->save_version(t);
  for (const Tensor& t : inputs)
    node->inputs.push_back(t.defined() && t.requires_grad() ? t.impl().autograd : nullptr);
  auto meta = std::make_shared<AutogradMeta>();
  meta->requires_grad = true;
  meta->grad_fn = std::move(node);
  output.impl().autograd = std::move(meta);
}

namespace {

// Nodes reachable from root, ordered so each node comes before the nodes that produced its inputs.
// Returned as owning pointers: releasing a node drops its links to its inputs, and the walk must
// keep the producers alive until their turn.
std::vector<std::shared_ptr<Node>> reverse_topological(const std::shared_ptr<Node>& root) {
  std::vector<std::shared_ptr<Node>> post_order;
  std::unordered_set<Node*> seen{root.get()};
  std::vector<std::pair<std::shared_ptr<Node>, size_t>> stack{{root, 0}};
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    if (next < node->inputs.size()) {
      const auto& meta = node->inputs[next++];
      std::shared_ptr<Node> child = meta ? meta->grad_fn : nullptr;
      if (child && seen.insert(child.get()).second) stack.push_back({std::move(child), 0});
    } else {
      post_order.push_back(node);
      stack.pop_back();
    }
  }
  return {post_order.rbegin(), post_order.rend()};
}

void accumulate_leaf(AutogradMeta& meta, const Tensor& g) {
  if (!meta.grad) {
    meta.grad = g.clone().impl_ptr();  // own it: g may alias another node's gradient
  } else {
    Tensor acc(meta.grad);
    add_(acc, g);
  }
}

}  // namespace

void Tensor::backward(const Tensor& grad_output) const {
  DL_CHECK(requires_grad(), "backward() on a tensor that does not require grad (no input of the ",
           "ops that made it requires grad: call requires_grad_() on the parameters, and do not ",
           "run the forward under a NoGradGuard)");
  Tensor seed = grad_output;
  if (!seed.defined()) {
    DL_CHECK(numel() == 1, "backward() without a gradient needs a one-element tensor, got shape ",
             shape_str(shape()));
    seed = Tensor::ones(shape(), dtype(), device());
  }
  DL_CHECK(seed.shape() == shape(), "backward: gradient shape ", shape_str(seed.shape()),
           " for output shape ", shape_str(shape()));
  NoGradGuard no_grad;
  if (!grad_fn()) {
    accumulate_leaf(*impl().autograd, seed);
    if (impl().autograd->post_accumulate_grad_hook) impl().autograd->post_accumulate_grad_hook();
    return;
  }
  const std::vector<std::shared_ptr<Node>> order = reverse_topological(grad_fn());
  // The gradients still to come for each leaf with a hook: its edges from the graph's nodes.
  std::unordered_map<AutogradMeta*, int> to_come;
  for (const std::shared_ptr<Node>& node : order)
    for (const auto& meta : node->inputs)
      if (meta && !meta->grad_fn && meta->post_accumulate_grad_hook) ++to_come[meta.get()];
  // Gradient waiting at each node's output; `owned` means we may add into it in place.
  struct Pending {
    Tensor grad;
    bool owned = false;
  };
  std::unordered_map<Node*, Pending> pending;
  pending[grad_fn().get()] = {seed, false};
  for (const std::shared_ptr<Node>& node : order) {
    const Tensor g = std::move(pending[node.get()].grad);
    pending.erase(node.get());
    const std::vector<std::shared_ptr<AutogradMeta>> inputs = node->inputs;
    const std::vector<Tensor> grads = node->apply(g);
    node->release();
    DL_CHECK(grads.size() == inputs.size(), "autograd: node '", node->name(), "' returned ",
             grads.size(), " gradients for ", inputs.size(), " inputs");
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!inputs[i]) continue;
      if (!inputs[i]->grad_fn) {
        AutogradMeta& leaf = *inputs[i];
        if (grads[i].defined()) accumulate_leaf(leaf, grads[i]);
        if (leaf.post_accumulate_grad_hook && --to_come[&leaf] == 0)
          leaf.post_accumulate_grad_hook();
        continue;
      }
      if (!grads[i].defined()) continue;
      auto [it, fresh] = pending.try_emplace(inputs[i]->grad_fn.get(), Pending{grads[i], false});
      if (fresh) continue;
      Pending& p = it->second;
      if (p.owned) {
        add_(p.grad, grads[i]);
      } else {
        p.grad = add(p.grad, grads[i]);
        p.owned = true;
      }
    }
  }
}

}  // namespace dl
