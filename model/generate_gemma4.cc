#include <torch/torch.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "model/gemma4_model.h"
#include "model/generate_internal.h"
#include "model/kv_cache.h"

namespace gemma {
namespace {

using generate_internal::DecodeLoop;
using generate_internal::Feeder;
using generate_internal::PositionsFromMask;

// Without a cache: the whole sequence again at every step (images included).
class Gemma4UncachedFeeder : public Feeder {
 public:
  Gemma4UncachedFeeder(Gemma4Model& model, Gemma4Inputs in)
      : model_(model), in_(std::move(in)) {}
  torch::Tensor Prefill() override { return Run(); }
  torch::Tensor Feed(const torch::Tensor& next) override {
    const int64_t l = in_.input_ids.size(1);
    in_.input_ids = torch::cat({in_.input_ids, next.unsqueeze(1)}, 1);
    in_.attention_mask = torch::cat(
        {in_.attention_mask, torch::ones_like(next).unsqueeze(1)}, 1);
    in_.position_ids = torch::cat(
        {in_.position_ids, in_.position_ids.narrow(1, l - 1, 1) + 1}, 1);
    return Run();
  }

 private:
  torch::Tensor Run() { return model_->forward(in_, nullptr).select(1, -1); }
  Gemma4Model& model_;
  Gemma4Inputs in_;
};

// The growing KV cache (sliding layers keep their window).
class Gemma4CachedFeeder : public Feeder {
 public:
  Gemma4CachedFeeder(Gemma4Model& model, Gemma4Inputs in)
      : model_(model),
        prompt_(std::move(in)),
        cache_(model->text->NewCache()) {}
  torch::Tensor Prefill() override {
    mask_ = prompt_.attention_mask;
    position_ =
        prompt_.position_ids.narrow(1, prompt_.position_ids.size(1) - 1, 1);
    return model_->forward(prompt_, &cache_).select(1, -1);
  }
  torch::Tensor Feed(const torch::Tensor& next) override {
    position_ = position_ + 1;
    mask_ = torch::cat({mask_, torch::ones_like(next).unsqueeze(1)}, 1);
    Gemma4Inputs step;
    step.input_ids = next.unsqueeze(1);
    step.attention_mask = mask_;
    step.position_ids = position_;
    return model_->forward(step, &cache_).select(1, -1);
  }

 private:
  Gemma4Model& model_;
  Gemma4Inputs prompt_;
  KvCache cache_;
  torch::Tensor mask_, position_;
};

}  // namespace

absl::StatusOr<GenerateResult> GenerateGemma4(Gemma4Model& model,
                                              const Gemma4Inputs& prompt,
                                              const GenerateOptions& opts) {
  if (!prompt.input_ids.defined() || prompt.input_ids.dim() != 2 ||
      prompt.input_ids.size(1) == 0) {
    return absl::InvalidArgumentError(
        "generate: input_ids must be a non-empty [batch, length]");
  }
  if (prompt.position_ids.defined()) {
    return absl::InvalidArgumentError(
        "generate: positions come from the attention mask; position_ids must "
        "be empty");
  }
  if (prompt.attention_mask.defined() &&
      prompt.attention_mask.sizes() != prompt.input_ids.sizes()) {
    return absl::InvalidArgumentError(
        "generate: attention_mask must have the shape of input_ids");
  }
  if (opts.max_new_tokens < 0)
    return absl::InvalidArgumentError("generate: max_new_tokens < 0");
  if (!(opts.top_p > 0.0 && opts.top_p <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("generate: top_p must be in (0, 1], got ", opts.top_p));
  }
  if (opts.top_k < 0)
    return absl::InvalidArgumentError("generate: top_k must be >= 0");
  try {
    torch::NoGradGuard no_grad;
    const torch::Tensor& w = model->text->embed->weight;
    const c10::Device dev = w.device();
    Gemma4Inputs in;
    in.input_ids = prompt.input_ids.to(dev, torch::kLong);
    in.attention_mask = prompt.attention_mask.defined()
                            ? prompt.attention_mask.to(dev, torch::kLong)
                            : torch::ones_like(in.input_ids);
    in.position_ids = PositionsFromMask(in.attention_mask);
    if (prompt.pixel_values.defined() && prompt.pixel_values.numel() > 0) {
      in.pixel_values = prompt.pixel_values.to(dev, w.scalar_type());
      in.image_positions = prompt.image_positions.to(dev, torch::kLong);
    }
    const int64_t batch = in.input_ids.size(0);
    std::unique_ptr<Feeder> feeder;
    if (opts.use_cache) {
      feeder = std::make_unique<Gemma4CachedFeeder>(model, std::move(in));
    } else {
      feeder = std::make_unique<Gemma4UncachedFeeder>(model, std::move(in));
    }
    return DecodeLoop(*feeder, batch, dev, opts);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("generate: ", e.what_without_backtrace()));
  }
}

}  // namespace gemma
