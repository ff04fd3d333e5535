// Key/value cache for decoding (HF DynamicCache semantics for Gemma 3).
//
// Full-attention layers keep every key and value. Sliding layers keep only the
// last (window - 1) tokens after each forward: a new query at index i sees keys
// i - window < j <= i, i.e. the window - 1 kept ones plus itself (HF
// DynamicSlidingWindowLayer). Keys are cached after q/k-norm and rotary.
// Tensors are [B, nkv_local, T, hd]. Not thread-safe; one cache per sequence
// batch, owned by the caller of the decode loop.
//
// Storage: one buffer per layer with spare room, so a decode step writes its
// new keys in place instead of copying the whole cache (a full layer doubles
// its buffer when full; a sliding layer moves its window - 1 tokens to the
// front once per ~window steps). Update returns views of the buffer, valid
// until the next Update. Keys that require grad take the copying path.
#ifndef GEMMA_MODEL_KV_CACHE_H_
#define GEMMA_MODEL_KV_CACHE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "model/config.h"

namespace gemma {

class LayerKvCache {
 public:
  // window 0: full attention (keep everything).
  explicit LayerKvCache(int64_t window = 0) : window_(window) {}

  // Appends k, v [B, nkv, L, hd]; returns cached + new keys and values (the
  // tensors attention runs over), then trims what a sliding layer no longer
  // needs.
  std::pair<torch::Tensor, torch::Tensor> Update(const torch::Tensor& k,
                                                 const torch::Tensor& v);

  int64_t seen() const { return seen_; }      // tokens fed so far
  int64_t cached() const { return cached_; }  // tokens held now
  int64_t window() const { return window_; }

 private:
  // Makes room for `incoming` more tokens after the held ones.
  void Reserve(const torch::Tensor& like, int64_t incoming);

  int64_t window_;
  int64_t seen_ = 0;
  int64_t cached_ = 0;
  int64_t start_ = 0;  // buffer index of the first held token
  torch::Tensor keys_;    // [B, nkv, capacity, hd]
  torch::Tensor values_;
};

class KvCache {
 public:
  KvCache() = default;
  // One layer per entry of text.layer_types; sliding layers get the window.
  explicit KvCache(const TextConfig& text);

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  LayerKvCache* layer(int64_t i) { return &layers_.at(static_cast<size_t>(i)); }
  // Tokens fed so far (the absolute index of the next token).
  int64_t seq_len() const {
    return layers_.empty() ? 0 : layers_.front().seen();
  }

  // Where the keys of a forward over `q_len` new tokens start and how many
  // there are, for a layer with `window` (0 = full): what BuildAttentionBias
  // needs.
  std::pair<int64_t, int64_t> MaskSizes(int64_t window, int64_t q_len) const;

 private:
  std::vector<LayerKvCache> layers_;
};

}  // namespace gemma

#endif  // GEMMA_MODEL_KV_CACHE_H_
