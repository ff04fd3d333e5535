// Pieces of the decoding loop (model/generate.cc) shared by the model
// families' Generate functions (Gemma 3 in generate.cc, Gemma 4 in
// generate_gemma4.cc). Not a public API.
#ifndef GEMMA_MODEL_GENERATE_INTERNAL_H_
#define GEMMA_MODEL_GENERATE_INTERNAL_H_

#include <ATen/core/Tensor.h>
#include <torch/torch.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "model/generate.h"
#include "model/kv_cache.h"

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

// The prompt and option checks every family's Generate makes (errors say
// "generate: ...").
absl::Status CheckGenerateInputs(const torch::Tensor& input_ids,
                                 const torch::Tensor& attention_mask,
                                 const torch::Tensor& position_ids,
                                 const GenerateOptions& opts);

// Without a cache: the whole sequence again at every step. `Model` is a
// module holder whose forward(inputs, KvCache*) gives logits [B, L, V];
// `Inputs` has input_ids, attention_mask and position_ids (and, when it has
// them, token_type_ids, continued with the last column's type).
template <typename Model, typename Inputs>
class UncachedFeeder : public Feeder {
 public:
  UncachedFeeder(Model& model, Inputs in) : model_(model), in_(std::move(in)) {}
  torch::Tensor Prefill() override { return Run(); }
  torch::Tensor Feed(const torch::Tensor& next) override {
    const int64_t l = in_.input_ids.size(1);
    in_.input_ids = torch::cat({in_.input_ids, next.unsqueeze(1)}, 1);
    in_.attention_mask = torch::cat(
        {in_.attention_mask, torch::ones_like(next).unsqueeze(1)}, 1);
    in_.position_ids = torch::cat(
        {in_.position_ids, in_.position_ids.narrow(1, l - 1, 1) + 1}, 1);
    if constexpr (HasTokenTypes<Inputs>::value) {
      if (in_.token_type_ids.defined()) {
        in_.token_type_ids = torch::cat(
            {in_.token_type_ids, in_.token_type_ids.narrow(1, l - 1, 1)}, 1);
      }
    }
    return Run();
  }

 private:
  template <typename T, typename = void>
  struct HasTokenTypes : std::false_type {};
  template <typename T>
  struct HasTokenTypes<T,
                       std::void_t<decltype(std::declval<T>().token_type_ids)>>
      : std::true_type {};

  torch::Tensor Run() { return model_->forward(in_, nullptr).select(1, -1); }
  Model& model_;
  Inputs in_;
};

// The growing KV cache `cache` (the model's NewCache()): the prompt once,
// then one token per row with the mask grown and the positions advanced.
template <typename Model, typename Inputs>
class CachedFeeder : public Feeder {
 public:
  CachedFeeder(Model& model, Inputs prompt, KvCache cache)
      : model_(model), prompt_(std::move(prompt)), cache_(std::move(cache)) {}
  torch::Tensor Prefill() override {
    mask_ = prompt_.attention_mask;
    position_ =
        prompt_.position_ids.narrow(1, prompt_.position_ids.size(1) - 1, 1);
    return model_->forward(prompt_, &cache_).select(1, -1);
  }
  torch::Tensor Feed(const torch::Tensor& next) override {
    position_ = position_ + 1;
    mask_ = torch::cat({mask_, torch::ones_like(next).unsqueeze(1)}, 1);
    Inputs step;
    step.input_ids = next.unsqueeze(1);
    step.attention_mask = mask_;
    step.position_ids = position_;
    return model_->forward(step, &cache_).select(1, -1);
  }

 private:
  Model& model_;
  Inputs prompt_;
  KvCache cache_;
  torch::Tensor mask_, position_;
};

// The loop: choose (greedy or sampled), stop rows on stop tokens or
// should_stop (continuing them with the pad id), end when all stopped or
// after max_new_tokens. Throws c10::Error from the model.
GenerateResult DecodeLoop(Feeder& feeder, int64_t batch, c10::Device dev,
                          const GenerateOptions& opts);

}  // namespace gemma::generate_internal

#endif  // GEMMA_MODEL_GENERATE_INTERNAL_H_
