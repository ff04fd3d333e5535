// Pieces of the decoding loop (model/generate.cc) shared by the model
// families' Generate functions (Gemma 3 in generate.cc, Gemma 4 in
// generate_gemma4.cc). Not a public API.
#ifndef GEMMA_MODEL_GENERATE_INTERNAL_H_
#define GEMMA_MODEL_GENERATE_INTERNAL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "model/generate.h"

namespace gemma::generate_internal {

// How the tokens after the prompt reach the model: Prefill runs the prompt,
// Feed one new token per row; both return the logits [B, V] that follow.
class Feeder {
 public:
  virtual ~Feeder() = default;
  virtual torch::Tensor Prefill() = 0;
  virtual torch::Tensor Feed(const torch::Tensor& next) = 0;
};

// HF generate's positions: cumsum(mask) - 1, pads at 0.
torch::Tensor PositionsFromMask(const torch::Tensor& mask);

// The loop: choose (greedy or sampled), stop rows on stop tokens or
// should_stop (continuing them with the pad id), end when all stopped or
// after max_new_tokens. Throws c10::Error from the model.
GenerateResult DecodeLoop(Feeder& feeder, int64_t batch, c10::Device dev,
                          const GenerateOptions& opts);

}  // namespace gemma::generate_internal

#endif  // GEMMA_MODEL_GENERATE_INTERNAL_H_
