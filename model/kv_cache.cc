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

std::pair<torch::Tensor, torch::Tensor> LayerKvCache::Update(
    const torch::Tensor& k, const torch::Tensor& v) {
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

std::pair<int64_t, int64_t> KvCache::MaskSizes(int64_t window,
                                               int64_t q_len) const {
  const int64_t past = seq_len();
  const int64_t held = window > 0 ? std::min<int64_t>(past, window - 1) : past;
  return {past - held, held + q_len};
}

}  // namespace gemma
