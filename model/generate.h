// Decoding loop on token ids: greedy or sampled, with or without a KV cache.
//
// Semantics follow transformers' generate for Gemma 3: positions come from the
// attention mask (cumsum - 1, pads at 0) so left-padded rows decode like
// unpadded ones; images and their bidirectional blocks apply to the prefill
// only; a row that produced a stop token is continued with pad_token_id; the
// loop ends when every row stopped or after max_new_tokens. Sampling applies
// temperature, then top-k, then top-p (keeping at least one token).
#ifndef GEMMA_MODEL_GENERATE_H_
#define GEMMA_MODEL_GENERATE_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "model/vl_model.h"

namespace gemma {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  // <= 0: greedy (argmax). Otherwise sample from softmax(logits / temperature).
  double temperature = 0.0;
  int64_t top_k = 0;   // 0: off
  double top_p = 1.0;  // 1: off
  uint64_t seed = 0;   // sampling RNG seed (same seed, same tokens)
  std::vector<int64_t> stop_token_ids;  // empty: never stop early
  int64_t pad_token_id = 0;
  bool use_cache =
      true;  // false: full forward over the whole sequence each step
  // With use_cache on a CUDA device (CUDA builds; no tensor parallelism):
  // each step replays one captured CUDA graph over a static KV cache
  // (model/static_decoder.h); prefill stays eager. The same tokens as
  // without. Ignored elsewhere (CPU, TP, without cache).
  bool cuda_graphs = true;
  // With use_cache: decode over the static KV cache (prompt + max_new_tokens
  // slots, fixed shapes) even without graphs, i.e. what the graphs replay,
  // eagerly. Off (and no graphs): the growing cache.
  bool static_cache = false;
  // Off: GenerateResult::step_logits stays empty (saves a [B, N, V] copy to
  // the host).
  bool return_step_logits = true;
  // Called after each step with the new tokens [B] (for progress output).
  std::function<void(int64_t step, const torch::Tensor& tokens)> on_step;
  // Optional: called after each step with every new token so far [B, step+1]
  // (pads after a row stopped); returns [B] bool, true for rows to stop now
  // (e.g. a stop string appeared). Stopped rows continue with pad_token_id.
  std::function<torch::Tensor(const torch::Tensor& generated)> should_stop;
};

struct GenerateResult {
  torch::Tensor tokens;  // [B, N] new tokens, N <= max_new_tokens
  // [B, N, V] the logits each token was chosen from (float32); undefined
  // without return_step_logits.
  torch::Tensor step_logits;
};

// `prompt` holds input_ids [B, L] and optionally attention_mask [B, L],
// pixel_values and token_type_ids (position_ids must be empty).
absl::StatusOr<GenerateResult> Generate(Gemma3Model& model,
                                        const ModelInputs& prompt,
                                        const GenerateOptions& options);

// One sampling step on logits [B, V] (fp32 math): argmax when temperature <= 0.
torch::Tensor ChooseNextTokens(const torch::Tensor& logits,
                               const GenerateOptions& options,
                               at::Generator* generator);

}  // namespace gemma

#endif  // GEMMA_MODEL_GENERATE_H_
