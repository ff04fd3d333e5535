#include "model/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <limits>

#include "absl/strings/str_cat.h"

namespace gemma {

torch::Tensor ChooseNextTokens(const torch::Tensor& logits,
                               const GenerateOptions& options,
                               at::Generator* generator) {
  if (options.temperature <= 0) return logits.argmax(-1);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  torch::Tensor x = logits.to(torch::kFloat) / options.temperature;
  const int64_t vocab = x.size(-1);
  if (options.top_k > 0 && options.top_k < vocab) {
    torch::Tensor kth =
        std::get<0>(x.topk(options.top_k, -1)).narrow(-1, options.top_k - 1, 1);
    x = x.masked_fill(x < kth, neg_inf);
  }
  if (options.top_p < 1.0) {
    auto [sorted, order] = x.sort(-1, /*descending=*/false);
    torch::Tensor cum = sorted.softmax(-1).cumsum(-1);
    torch::Tensor remove = cum <= (1.0 - options.top_p);
    remove.narrow(-1, vocab - 1, 1)
        .fill_(false);  // keep at least the best token
    x = x.masked_fill(remove.scatter(-1, order, remove), neg_inf);
  }
  torch::Tensor probs = x.softmax(-1);
  std::optional<at::Generator> gen;
  if (generator != nullptr) gen = *generator;
  return torch::multinomial(probs, 1, /*replacement=*/false, gen).squeeze(-1);
}

namespace {
// HF generate's positions: cumsum(mask) - 1, pads at 0.
torch::Tensor PositionsFromMask(const torch::Tensor& mask) {
  return (mask.cumsum(-1) - 1).masked_fill(mask.eq(0), 0);
}
}  // namespace

absl::StatusOr<GenerateResult> Generate(Gemma3Model& model,
                                        const ModelInputs& prompt,
                                        const GenerateOptions& opts) {
  if (!prompt.input_ids.defined() || prompt.input_ids.dim() != 2 ||
      prompt.input_ids.size(1) == 0) {
    return absl::InvalidArgumentError(
        "generate: input_ids must be a non-empty [batch, length]");
  }
  if (prompt.position_ids.defined()) {
    return absl::InvalidArgumentError(
        "generate: positions come from the attention mask; "
        "position_ids must be empty");
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
    const int64_t b = prompt.input_ids.size(0);
    const c10::Device dev = model->text->embed->weight.device();
    const auto long_opts =
        torch::TensorOptions().dtype(torch::kLong).device(dev);
    torch::Tensor ids = prompt.input_ids.to(dev, torch::kLong);
    torch::Tensor mask = prompt.attention_mask.defined()
                             ? prompt.attention_mask.to(dev, torch::kLong)
                             : torch::ones_like(ids);
    if (mask.sizes() != ids.sizes()) {
      return absl::InvalidArgumentError(
          "generate: attention_mask must have the shape of input_ids");
    }
    at::Generator gen = at::detail::createCPUGenerator(opts.seed);
    torch::Tensor stop =
        torch::tensor(opts.stop_token_ids, torch::kLong).to(dev);
    torch::Tensor unfinished = torch::ones(
        {b}, torch::TensorOptions().dtype(torch::kBool).device(dev));
    std::vector<torch::Tensor> tokens, step_logits;
    torch::Tensor positions = PositionsFromMask(mask);
    torch::Tensor token_types = prompt.token_type_ids.defined()
                                    ? prompt.token_type_ids.to(dev)
                                    : torch::Tensor();

    KvCache cache = model->NewCache();
    ModelInputs in = prompt;
    in.input_ids = ids;
    in.token_type_ids = token_types;
    if (in.pixel_values.defined()) in.pixel_values = in.pixel_values.to(dev);
    in.attention_mask = mask;
    in.position_ids = positions;
    torch::Tensor last =
        model->forward(in, opts.use_cache ? &cache : nullptr).select(1, -1);
    for (int64_t step = 0; step < opts.max_new_tokens; ++step) {
      torch::Tensor next = ChooseNextTokens(last, opts, &gen);
      next = torch::where(unfinished, next,
                          torch::full_like(next, opts.pad_token_id));
      tokens.push_back(next);
      step_logits.push_back(last.to(torch::kFloat));
      if (opts.on_step) opts.on_step(step, next);
      if (stop.numel() > 0)
        unfinished =
            unfinished.logical_and(torch::isin(next, stop).logical_not());
      if (opts.should_stop) {
        torch::Tensor extra = opts.should_stop(torch::stack(tokens, 1).cpu());
        unfinished = unfinished.logical_and(
            extra.to(unfinished.device(), torch::kBool).logical_not());
      }
      if (!unfinished.any().item<bool>() || step + 1 == opts.max_new_tokens)
        break;

      torch::Tensor next_col = next.unsqueeze(1);
      torch::Tensor next_pos =
          positions.narrow(1, positions.size(1) - 1, 1) + 1;
      mask = torch::cat({mask, torch::ones({b, 1}, long_opts)}, 1);
      positions = torch::cat({positions, next_pos}, 1);
      if (opts.use_cache) {
        ModelInputs step_in;
        step_in.input_ids = next_col;
        step_in.attention_mask = mask;
        step_in.position_ids = next_pos;
        last = model->forward(step_in, &cache).select(1, -1);
      } else {
        ids = torch::cat({ids, next_col}, 1);
        if (token_types.defined()) {
          token_types = torch::cat(
              {token_types, token_types.narrow(1, token_types.size(1) - 1, 1)},
              1);
        }
        ModelInputs full = in;
        full.input_ids = ids;
        full.attention_mask = mask;
        full.position_ids = positions;
        full.token_type_ids = token_types;
        last = model->forward(full, nullptr).select(1, -1);
      }
    }
    GenerateResult result;
    if (tokens.empty()) {
      result.tokens = torch::zeros({b, 0}, torch::kLong);
      result.step_logits = torch::zeros({b, 0, last.size(-1)}, torch::kFloat);
    } else {
      result.tokens = torch::stack(tokens, 1).cpu();
      result.step_logits = torch::stack(step_logits, 1).cpu();
    }
    return result;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("generate: ", e.what_without_backtrace()));
  }
}

}  // namespace gemma
