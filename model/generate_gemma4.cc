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

using Gemma4UncachedFeeder =
    generate_internal::UncachedFeeder<Gemma4Model, Gemma4Inputs>;
using Gemma4CachedFeeder =
    generate_internal::CachedFeeder<Gemma4Model, Gemma4Inputs>;

}  // namespace

absl::StatusOr<GenerateResult> GenerateGemma4(Gemma4Model& model,
                                              const Gemma4Inputs& prompt,
                                              const GenerateOptions& opts) {
  if (absl::Status st = generate_internal::CheckGenerateInputs(
          prompt.input_ids, prompt.attention_mask, prompt.position_ids, opts);
      !st.ok())
    return st;
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
      KvCache cache = model->text->NewCache();
      feeder = std::make_unique<Gemma4CachedFeeder>(model, std::move(in),
                                                    std::move(cache));
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
