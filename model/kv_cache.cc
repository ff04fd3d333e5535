#include "model/kv_cache.h"

#include <torch/torch.h>

#include <algorithm>

namespace gemma {

void LayerKvCache::Reserve(const torch::Tensor& like, int64_t incoming) {
  const int64_t need = cached_ + incoming;
  const int64_t capacity = keys_.defined() ? keys_.size(2) : 0;
  if (start_ + need <= capacity) return;
  if (need <= capacity && window_ > 0) {
    // Slide: move the held tokens to the front of the buffer.
    if (cached_ > 0) {
      keys_.narrow(2, 0, cached_)
          .copy_(keys_.narrow(2, start_, cached_).clone());
      values_.narrow(2, 0, cached_)
          .copy_(values_.narrow(2, start_, cached_).clone());
    }
    start_ = 0;
    return;
  }
  // Grow: doubling for full layers; a sliding layer needs its window plus
  // room for ~window more steps.
  int64_t grown = window_ > 0 ? std::max(need, 2 * window_)
                              : std::max(need, 2 * capacity);
  grown = std::max<int64_t>(grown, 16);
  std::vector<int64_t> shape = like.sizes().vec();
  shape[2] = grown;
  torch::Tensor nk = torch::empty(shape, like.options());
  torch::Tensor nv = torch::empty(shape, like.options());
  if (cached_ > 0) {
    nk.narrow(2, 0, cached_).copy_(keys_.narrow(2, start_, cached_));
    nv.narrow(2, 0, cached_).copy_(values_.narrow(2, start_, cached_));
  }
  keys_ = nk;
  values_ = nv;
  start_ = 0;
}

void LayerKvCache::SetStepIndex(const torch::Tensor& index) {
  TORCH_CHECK(is_static(), "KV cache: a step index needs a static cache");
  TORCH_CHECK(!index.defined() || (index.dim() == 1 && index.numel() == 1 &&
                                   index.scalar_type() == torch::kLong),
              "KV cache: the step index must be a [1] int64 tensor");
  step_index_ = index;
}

void LayerKvCache::AllocateStatic(const torch::Tensor& k,
                                  const torch::Tensor& v) {
  if (keys_.defined()) return;
  // Zeroed: attention multiplies the masked slots' values by 0, and
  // uninitialised memory could hold NaN.
  std::vector<int64_t> shape = k.sizes().vec();
  shape[2] = static_capacity_;
  keys_ = torch::zeros(shape, k.options());
  values_ = torch::zeros(shape, v.options());
}

std::pair<torch::Tensor, torch::Tensor> LayerKvCache::StaticBuffers(
    const torch::Tensor& k, const torch::Tensor& v) {
  TORCH_CHECK(is_static(), "KV cache: StaticBuffers needs a static cache");
  AllocateStatic(k, v);
  return {keys_, values_};
}

std::pair<torch::Tensor, torch::Tensor> LayerKvCache::UpdateStatic(
    const torch::Tensor& k, const torch::Tensor& v) {
  TORCH_CHECK(!k.requires_grad() && !v.requires_grad(),
              "KV cache: a static cache is for inference (no autograd)");
  const int64_t l = k.size(2);
  AllocateStatic(k, v);
  if (step_index_.defined()) {
    TORCH_CHECK(l == 1, "KV cache: a step writes one token per row, got ", l);
    keys_.index_copy_(2, step_index_, k);
    values_.index_copy_(2, step_index_, v);
    return {keys_, values_};
  }
  TORCH_CHECK(seen_ + l <= static_capacity_, "KV cache: ", seen_ + l,
              " tokens do not fit the static cache's ", static_capacity_,
              " slots");
  keys_.narrow(2, seen_, l).copy_(k);
  values_.narrow(2, seen_, l).copy_(v);
  seen_ += l;
  cached_ = seen_;
  return {keys_.narrow(2, 0, seen_), values_.narrow(2, 0, seen_)};
}

std::pair<torch::Tensor, torch::Tensor> LayerKvCache::Update(
    const torch::Tensor& k, const torch::Tensor& v) {
  if (is_static()) return UpdateStatic(k, v);
  const int64_t l = k.size(2);
  seen_ += l;
  std::pair<torch::Tensor, torch::Tensor> all;
  if (k.requires_grad() || v.requires_grad()) {
    // Autograd must see the concatenation, not writes into a shared buffer.
    torch::Tensor old_k = cached_ > 0 ? keys_.narrow(2, start_, cached_) : k.narrow(2, 0, 0);
    torch::Tensor old_v = cached_ > 0 ? values_.narrow(2, start_, cached_) : v.narrow(2, 0, 0);
    all = {torch::cat({old_k, k}, 2), torch::cat({old_v, v}, 2)};
    keys_ = all.first;
    values_ = all.second;
    start_ = 0;
  } else {
    Reserve(k, l);
    keys_.narrow(2, start_ + cached_, l).copy_(k);
    values_.narrow(2, start_ + cached_, l).copy_(v);
    all = {keys_.narrow(2, start_, cached_ + l),
           values_.narrow(2, start_, cached_ + l)};
  }
  const int64_t total = cached_ + l;
  const int64_t keep =
      window_ > 0 ? std::min<int64_t>(total, window_ - 1) : total;
  start_ += total - keep;
  cached_ = keep;
  return all;
}

KvCache::KvCache(const TextConfig& text) {
  layers_.reserve(text.layer_types.size());
  for (LayerType t : text.layer_types) {
    layers_.emplace_back(t == LayerType::kSliding ? text.sliding_window : 0);
  }
}

KvCache KvCache::Static(const TextConfig& text, int64_t capacity) {
  TORCH_CHECK(capacity >= 1, "KV cache: static capacity must be >= 1, got ",
              capacity);
  KvCache cache;
  cache.capacity_ = capacity;
  cache.layers_.reserve(text.layer_types.size());
  for (LayerType t : text.layer_types) {
    cache.layers_.emplace_back(
        t == LayerType::kSliding ? text.sliding_window : 0, capacity);
  }
  return cache;
}

void KvCache::SetStepIndex(const torch::Tensor& index) {
  TORCH_CHECK(is_static(), "KV cache: a step index needs a static cache");
  for (LayerKvCache& layer : layers_) layer.SetStepIndex(index);
  step_index_ = index;
}

std::pair<int64_t, int64_t> KvCache::MaskSizes(int64_t window,
                                               int64_t q_len) const {
  const int64_t past = seq_len();
  if (is_static()) return {0, past + q_len};
  const int64_t held = window > 0 ? std::min<int64_t>(past, window - 1) : past;
  return {past - held, held + q_len};
}

}  // namespace gemma
