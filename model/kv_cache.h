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
//
// Static mode (KvCache::Static, for decoding with fixed shapes: CUDA graphs,
// model/static_decoder.h): every layer, sliding ones too, holds zeroed buffers
// of a fixed `capacity` [B, nkv, capacity, hd] allocated on the first Update,
// and token t's keys live at slot t; nothing is trimmed (a sliding layer's
// window is left to the attention mask). Two ways to write:
//   host positions (no step index set; the prefill, any L): Update writes at
//     [seen, seen + L) and returns slots [0, seen + L), like a full layer;
//   step index (SetStepIndex): Update writes its one token per row at the
//     slot held by a [1] int64 device tensor, read when the step runs, and
//     returns the whole buffers; no host sync, shapes never change. The
//     caller masks the slots not yet written (StaticStepBias in layers.h)
//     and advances the index in place. seen() no longer counts then.
#ifndef GEMMA_MODEL_KV_CACHE_H_
#define GEMMA_MODEL_KV_CACHE_H_

#include <ATen/core/Tensor.h>
#include <torch/types.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "model/config.h"

namespace gemma {

class LayerKvCache {
 public:
  // window 0: full attention (keep everything). static_capacity > 0: static
  // mode with that many slots (see above).
  explicit LayerKvCache(int64_t window = 0, int64_t static_capacity = 0)
      : window_(window), static_capacity_(static_capacity) {}

  // Appends k, v [B, nkv, L, hd]; returns cached + new keys and values (the
  // tensors attention runs over), then trims what a sliding layer no longer
  // needs.
  std::pair<torch::Tensor, torch::Tensor> Update(const torch::Tensor& k,
                                                 const torch::Tensor& v);

  int64_t seen() const { return seen_; }      // tokens fed so far
  int64_t cached() const { return cached_; }  // tokens held now
  int64_t window() const { return window_; }
  bool is_static() const { return static_capacity_ > 0; }
  // Static mode: the slot index [1] int64 every later Update writes at (see
  // above); an undefined tensor goes back to host positions.
  void SetStepIndex(const torch::Tensor& index);
  // Static mode: the whole buffers {keys, values} [B, nkv, capacity, hd], for
  // a kernel that writes a step's keys and values at the step index itself
  // (model/decode_attention.h) in place of Update. Allocated (zeroed, with
  // the batch, heads, head_dim and dtype of k, v [B, nkv, L, hd]) when no
  // Update ran yet. Throws c10::Error unless static.
  std::pair<torch::Tensor, torch::Tensor> StaticBuffers(const torch::Tensor& k,
                                                        const torch::Tensor& v);

 private:
  // Makes room for `incoming` more tokens after the held ones.
  void Reserve(const torch::Tensor& like, int64_t incoming);
  std::pair<torch::Tensor, torch::Tensor> UpdateStatic(const torch::Tensor& k,
                                                       const torch::Tensor& v);
  // Static mode: allocates the zeroed buffers on first use.
  void AllocateStatic(const torch::Tensor& k, const torch::Tensor& v);

  int64_t window_;
  int64_t static_capacity_ = 0;
  torch::Tensor step_index_;  // static mode: [1] int64, or undefined
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
  // A static cache (see above) of `capacity` slots in every layer: what the
  // prompt and every token fed after it need. Throws c10::Error when
  // capacity < 1.
  static KvCache Static(const TextConfig& text, int64_t capacity);

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  LayerKvCache* layer(int64_t i) { return &layers_.at(static_cast<size_t>(i)); }
  // Tokens fed so far (the absolute index of the next token); for a static
  // cache in step-index mode, those fed before the index was set.
  int64_t seq_len() const {
    return layers_.empty() ? 0 : layers_.front().seen();
  }

  // Where the keys of a forward over `q_len` new tokens start and how many
  // there are, for a layer with `window` (0 = full): what BuildAttentionBias
  // needs. A static cache in host positions returns every written slot
  // (0, seq_len() + q_len) for all layers.
  std::pair<int64_t, int64_t> MaskSizes(int64_t window, int64_t q_len) const;

  bool is_static() const { return capacity_ > 0; }
  int64_t capacity() const { return capacity_; }  // static: slots per layer
  // Static caches: sets every layer's step index (LayerKvCache::SetStepIndex).
  // The tensor is shared, not copied: advancing it in place moves all layers.
  void SetStepIndex(const torch::Tensor& index);
  const torch::Tensor& step_index() const { return step_index_; }

 private:
  std::vector<LayerKvCache> layers_;
  int64_t capacity_ = 0;      // static caches only
  torch::Tensor step_index_;  // static caches in step-index mode
};

}  // namespace gemma

#endif  // GEMMA_MODEL_KV_CACHE_H_
