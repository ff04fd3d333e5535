#include "model/kv_cache.h"

#include <torch/torch.h>

#include <algorithm>

namespace gemma {

std::pair<torch::Tensor, torch::Tensor> LayerKvCache::Update(
    const torch::Tensor& k, const torch::Tensor& v) {
  torch::Tensor all_k = keys_.defined() ? torch::cat({keys_, k}, 2) : k;
  torch::Tensor all_v = values_.defined() ? torch::cat({values_, v}, 2) : v;
  seen_ += k.size(2);
  const int64_t total = all_k.size(2);
  const int64_t keep =
      window_ > 0 ? std::min<int64_t>(total, window_ - 1) : total;
  if (keep == total) {
    keys_ = all_k;
    values_ = all_v;
  } else {
    keys_ = all_k.narrow(2, total - keep, keep).contiguous();
    values_ = all_v.narrow(2, total - keep, keep).contiguous();
  }
  cached_ = keep;
  return {all_k, all_v};
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
