// Batch decoding over a static KV cache (KvCache::Static), one token per row
// per step, with every per-step input in a device tensor: after an eager
// prefill, each Step has the same shapes, issues no host-device sync and
// keeps its inputs at fixed addresses, which is what a CUDA graph captures.
// CaptureGraph records one step (CUDA builds, on a CUDA device); every later
// Step replays it. The tokens and logits are the same with or without the
// graph (the graph replays the eager step's kernels).
//
// Step state, on the model's device, written in place by each step:
//   tokens_   [B, 1] int64  what the next Step feeds (SetTokens)
//   index_    [1] int64     their absolute index = their cache slot
//   position_ [B, 1] int64  their rotary positions (lower with left padding)
//   padding_  [B, C] int64  1 for the slots of real tokens (the prompt's
//                           attention mask, then 1 per step)
// A step marks its slot real, embeds tokens_, gathers cos/sin from tables
// precomputed for positions [0, C), runs the layers (Gemma3TextModel::
// DecodeStep: keys written at index_, the mask built from index_ and
// padding_), the LM head, then advances index_ and position_ by one.
//
// The model must outlive the decoder, stay in eval mode, and keep its weights
// where they are (a graph reads them in place). Not thread-safe; one decoder
// per sequence batch.
#ifndef GEMMA_MODEL_STATIC_DECODER_H_
#define GEMMA_MODEL_STATIC_DECODER_H_

#include <ATen/core/Tensor.h>
#include <torch/types.h>

#include <cstdint>

#include "model/cuda_graph.h"
#include "model/kv_cache.h"
#include "model/vl_model.h"

namespace gemma {

class StaticDecoder {
 public:
  // Warm-up steps CaptureGraph runs (and undoes) before recording.
  static constexpr int64_t kWarmupSteps = 2;

  // capacity: cache slots = prompt length + tokens fed after it (a graph's
  // warm-up needs kWarmupSteps free slots at capture).
  StaticDecoder(Gemma3Model model, int64_t capacity);

  // Runs `prompt` (as Gemma3Model::forward: input_ids [B, L], optional
  // attention_mask [B, L], position_ids [B or 1, L], token_type_ids,
  // pixel_values) into the cache, eagerly; returns the logits [B, V] of its
  // last position. Once per decoder. Throws c10::Error on bad inputs or
  // L > capacity.
  torch::Tensor Prefill(const ModelInputs& prompt);

  // Sets the tokens [B] (int64, any device) the next Step feeds.
  void SetTokens(const torch::Tensor& tokens);

  // Feeds the tokens set last; returns the logits [B, V] that follow them.
  // After CaptureGraph the result is the graph's output buffer, overwritten
  // by the next Step: copy what must survive. Throws when the cache is full.
  torch::Tensor Step();

  // Records one Step as a CUDA graph so that later Steps replay it. Returns
  // false, leaving the steps eager, where graphs do not apply: not a CUDA
  // build, not on a CUDA device, tensor parallelism, or fewer than
  // kWarmupSteps free slots. Throws c10::Error when the capture fails.
  bool CaptureGraph();
  bool graph_captured() const { return graph_.captured(); }

  // Runs `steps` eager steps and then restores index_, position_ and
  // padding_: the state is as before, and the cache slots the steps wrote
  // lie past index_, hidden by the mask until a real step overwrites them.
  // CaptureGraph's warm-up; public so tests can check that it is a no-op.
  void WarmUp(int64_t steps);

  int64_t capacity() const { return capacity_; }
  // Tokens in the cache: the prompt's plus one per Step.
  int64_t fed() const { return fed_; }

 private:
  // The step CaptureGraph records: no host sync, fixed shapes.
  torch::Tensor RunStep();

  Gemma3Model model_;
  int64_t capacity_;
  int64_t fed_ = 0;  // host mirror of index_
  KvCache cache_;
  torch::Tensor tokens_, index_, position_, padding_;
  // cos/sin [C, hd] for positions 0..C-1 per layer type (0 sliding, 1 full).
  torch::Tensor cos_table_[2], sin_table_[2];
  CudaGraph graph_;
};

}  // namespace gemma

#endif  // GEMMA_MODEL_STATIC_DECODER_H_
