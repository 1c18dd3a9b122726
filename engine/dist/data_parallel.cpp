#include "engine/dist/data_parallel.h"

#include "engine/error.h"

namespace dl::dist {

GradientReducer::GradientReducer(Communicator& comm, std::vector<Tensor> params,
                                 int64_t bucket_bytes)
    : comm_(comm), params_(std::move(params)) {
  DL_CHECK(bucket_bytes > 0, "GradientReducer: the bucket size must be positive");
  std::vector<int64_t> sizes;  // each bucket's elements
  for (size_t k = params_.size(); k-- > 0;) {
    const Tensor& p = params_[k];
    DL_CHECK(p.dtype() == DType::f32, "GradientReducer: parameter ", k, " is ",
             dtype_name(p.dtype()), ", expected F32");
    const int64_t bytes = p.numel() * static_cast<int64_t>(sizeof(float));
    const bool fits = !buckets_.empty() &&
                      params_[buckets_.back().params.front()].device() == p.device() &&
                      (sizes.back() * static_cast<int64_t>(sizeof(float)) + bytes <= bucket_bytes);
    if (!fits) {
      buckets_.emplace_back();
      sizes.push_back(0);
    }
    buckets_.back().params.push_back(k);
    sizes.back() += p.numel();
    bytes_ += bytes;
  }
  for (size_t b = 0; b < buckets_.size(); ++b) {
    buckets_[b].flat =
        Tensor::empty({sizes[b]}, DType::f32, params_[buckets_[b].params.front()].device());
    for (size_t k : buckets_[b].params)
      params_[k].set_post_accumulate_grad_hook([this, b] { on_ready(b); });
  }
}

GradientReducer::~GradientReducer() {
  for (const Tensor& p : params_) p.set_post_accumulate_grad_hook({});
}

void GradientReducer::on_ready(size_t b) {
  DL_CHECK(++buckets_[b].ready <= buckets_[b].params.size(),
           "GradientReducer: a second backward before sum_gradients() (gradients accumulated "
           "over several backwards are not supported)");
  while (next_to_start_ < buckets_.size() &&
         buckets_[next_to_start_].ready == buckets_[next_to_start_].params.size()) {
    start(buckets_[next_to_start_++]);
    ++started_in_backward_;
  }
}

void GradientReducer::start(Bucket& bucket) {
  int64_t offset = 0;
  for (size_t k : bucket.params) {
    const Tensor& p = params_[k];
    Tensor part = bucket.flat.slice(0, offset, offset + p.numel());
    const Tensor grad = p.grad();
    if (grad.defined()) {
      part.copy_(grad.reshape({p.numel()}));
    } else {
      part.zero_();
    }
    offset += p.numel();
  }
  bucket.sum = comm_.all_reduce_sum_async(bucket.flat);
}

void GradientReducer::sum_gradients() {
  while (next_to_start_ < buckets_.size()) start(buckets_[next_to_start_++]);
  for (Bucket& bucket : buckets_) {
    bucket.sum->wait();
    bucket.sum.reset();
    bucket.ready = 0;
    int64_t offset = 0;
    for (size_t k : bucket.params) {
      const Tensor& p = params_[k];
      const Tensor summed = bucket.flat.slice(0, offset, offset + p.numel()).reshape(p.shape());
      Tensor grad = p.grad();
      if (grad.defined()) {
        grad.copy_(summed);
      } else {
        p.set_grad(summed.clone());
      }
      offset += p.numel();
    }
  }
  next_to_start_ = 0;
  started_in_backward_ = 0;
}

namespace {

void broadcast_all(Communicator& comm, const nn::NamedTensors& tensors) {
  for (const auto& [name, t] : tensors) {
    DL_CHECK(t.is_contiguous(), "broadcast: '", name, "' is not contiguous");
    Tensor target = t;
    comm.broadcast(target, 0);
  }
}

}  // namespace

void broadcast_parameters(Communicator& comm, nn::Module& module) {
  if (comm.size() > 1) broadcast_all(comm, module.named_parameters());
}

void broadcast_buffers(Communicator& comm, nn::Module& module) {
  if (comm.size() > 1) broadcast_all(comm, module.named_buffers());
}

void sync_batch_norm(nn::Module& module, Communicator& comm) {
  if (comm.size() == 1) return;
  module.apply([&comm](nn::Module& m) {
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(&m))
      bn->sum_over_ranks = [&comm](double* values, int64_t count) {
        comm.all_reduce_sum(std::span<double>(values, static_cast<size_t>(count)));
      };
  });
}

}  // namespace dl::dist
