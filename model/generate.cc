#include "model/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <limits>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/cuda_graph.h"
#include "model/generate_internal.h"
#include "model/kv_cache.h"
#include "model/static_decoder.h"

#ifdef GEMMA_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif

namespace gemma {

namespace generate_internal {

// HF generate's positions: cumsum(mask) - 1, pads at 0.
torch::Tensor PositionsFromMask(const torch::Tensor& mask) {
  return (mask.cumsum(-1) - 1).masked_fill(mask.eq(0), 0);
}

// Steps between reads of the stop state (one host sync each).
constexpr int64_t kStopCheckInterval = 8;
// Static caches get prompt + max_new_tokens slots rounded up to this.
constexpr int64_t kCapacityRounding = 64;

// A sampling generator on `device` (CUDA ops reject a CPU generator).
at::Generator MakeGenerator(c10::Device device, uint64_t seed) {
#ifdef GEMMA_WITH_CUDA
  if (device.is_cuda()) {
    at::Generator gen = at::cuda::detail::createCUDAGenerator(device.index());
    gen.set_current_seed(seed);
    return gen;
  }
#endif
  (void)device;
  return at::detail::createCPUGenerator(seed);
}

// Index of the first false in `flags` (bool scalars), or -1: one host sync.
int64_t FirstFalse(const std::vector<torch::Tensor>& flags) {
  torch::Tensor f = torch::stack(flags).cpu();
  const bool* p = f.data_ptr<bool>();
  for (int64_t i = 0; i < f.numel(); ++i)
    if (!p[i]) return i;
  return -1;
}

absl::Status CheckGenerateInputs(const torch::Tensor& input_ids,
                                 const torch::Tensor& attention_mask,
                                 const torch::Tensor& position_ids,
                                 const GenerateOptions& opts) {
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.size(1) == 0) {
    return absl::InvalidArgumentError(
        "generate: input_ids must be a non-empty [batch, length]");
  }
  if (position_ids.defined()) {
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
  if (attention_mask.defined() && attention_mask.sizes() != input_ids.sizes()) {
    return absl::InvalidArgumentError(
        "generate: attention_mask must have the shape of input_ids");
  }
  return absl::OkStatus();
}

GenerateResult DecodeLoop(Feeder& feeder, int64_t batch, c10::Device dev,
                          const GenerateOptions& opts) {
  at::Generator gen = MakeGenerator(dev, opts.seed);
  torch::Tensor stop = torch::tensor(opts.stop_token_ids, torch::kLong).to(dev);
  torch::Tensor unfinished = torch::ones(
      {batch}, torch::TensorOptions().dtype(torch::kBool).device(dev));
  // The host must see the stop state after each step only when a callback
  // is called per step; otherwise it reads `alive` (any row unfinished
  // after step alive_first + i) every kStopCheckInterval steps.
  const bool can_stop = stop.numel() > 0 || opts.should_stop;
  const bool check_each_step = opts.on_step || opts.should_stop;
  std::vector<torch::Tensor> alive;
  int64_t alive_first = 0, stop_at = -1;
  std::vector<torch::Tensor> tokens, step_logits;

  torch::Tensor last = feeder.Prefill();
  const int64_t vocab = last.size(-1);
  for (int64_t step = 0; step < opts.max_new_tokens; ++step) {
    torch::Tensor next = ChooseNextTokens(last, opts, &gen);
    next = torch::where(unfinished, next,
                        torch::full_like(next, opts.pad_token_id));
    tokens.push_back(next);
    if (opts.return_step_logits) {
      // A copy: a graph's output buffer is overwritten by the next step.
      step_logits.push_back(last.to(torch::kFloat, /*non_blocking=*/false,
                                    /*copy=*/true));
    }
    if (opts.on_step) opts.on_step(step, next);
    if (stop.numel() > 0)
      unfinished =
          unfinished.logical_and(torch::isin(next, stop).logical_not());
    if (opts.should_stop) {
      torch::Tensor extra = opts.should_stop(torch::stack(tokens, 1).cpu());
      unfinished = unfinished.logical_and(
          extra.to(unfinished.device(), torch::kBool).logical_not());
    }
    if (step + 1 == opts.max_new_tokens) break;
    if (can_stop) {
      alive.push_back(unfinished.any());
      if (check_each_step ||
          static_cast<int64_t>(alive.size()) == kStopCheckInterval) {
        const int64_t i = FirstFalse(alive);
        if (i >= 0) {
          stop_at = alive_first + i;
          break;
        }
        alive.clear();
        alive_first = step + 1;
      }
    }
    last = feeder.Feed(next);
  }
  if (stop_at < 0 && !alive.empty()) {
    const int64_t i = FirstFalse(alive);
    if (i >= 0) stop_at = alive_first + i;
  }
  if (stop_at >= 0) {  // every row had stopped after step stop_at
    tokens.resize(static_cast<size_t>(stop_at + 1));
    if (!step_logits.empty())
      step_logits.resize(static_cast<size_t>(stop_at + 1));
  }
  GenerateResult result;
  result.tokens = tokens.empty() ? torch::zeros({batch, 0}, torch::kLong)
                                 : torch::stack(tokens, 1).cpu();
  if (opts.return_step_logits) {
    result.step_logits = step_logits.empty()
                             ? torch::zeros({batch, 0, vocab}, torch::kFloat)
                             : torch::stack(step_logits, 1).cpu();
  }
  return result;
}

}  // namespace generate_internal

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

using generate_internal::DecodeLoop;
using generate_internal::Feeder;
using generate_internal::kCapacityRounding;
using generate_internal::PositionsFromMask;
using UncachedFeeder =
    generate_internal::UncachedFeeder<Gemma3Model, ModelInputs>;
using DynamicFeeder = generate_internal::CachedFeeder<Gemma3Model, ModelInputs>;

// The prompt on the device, with its mask and positions filled in.
struct Prompt {
  ModelInputs in;
  int64_t batch = 0;
};

// The static KV cache (StaticDecoder), its steps replayed as a CUDA graph
// when `graphs` (captured at the first Feed, once the tokens are set).
class StaticFeeder : public Feeder {
 public:
  StaticFeeder(Gemma3Model& model, const Prompt& p, int64_t capacity,
               bool graphs)
      : prompt_(p.in), decoder_(model, capacity), graphs_(graphs) {}
  torch::Tensor Prefill() override { return decoder_.Prefill(prompt_); }
  torch::Tensor Feed(const torch::Tensor& next) override {
    decoder_.SetTokens(next);
    if (graphs_) {
      graphs_ = false;
      decoder_.CaptureGraph();
    }
    return decoder_.Step();
  }

 private:
  ModelInputs prompt_;
  StaticDecoder decoder_;
  bool graphs_;
};

std::unique_ptr<Feeder> MakeFeeder(Gemma3Model& model, const Prompt& p,
                                   const GenerateOptions& opts) {
  if (!opts.use_cache) return std::make_unique<UncachedFeeder>(model, p.in);
  // Graphs need eval mode: a training-mode module may draw random numbers
  // (LoRA dropout), which a capture cannot replay as drawn.
  const bool graphs = opts.cuda_graphs && CudaGraphsBuilt() &&
                      p.in.input_ids.is_cuda() && !model->is_training() &&
                      !model->text->tp().split();
  if (!graphs && !opts.static_cache)
    return std::make_unique<DynamicFeeder>(model, p.in, model->NewCache());
  const int64_t need = p.in.input_ids.size(1) + opts.max_new_tokens;
  const int64_t capacity =
      (need + kCapacityRounding - 1) / kCapacityRounding * kCapacityRounding;
  return std::make_unique<StaticFeeder>(model, p, capacity, graphs);
}
}  // namespace

absl::StatusOr<GenerateResult> Generate(Gemma3Model& model,
                                        const ModelInputs& prompt,
                                        const GenerateOptions& opts) {
  if (absl::Status st = generate_internal::CheckGenerateInputs(
          prompt.input_ids, prompt.attention_mask, prompt.position_ids, opts);
      !st.ok())
    return st;
  try {
    torch::NoGradGuard no_grad;
    const c10::Device dev = model->text->embed->weight.device();
    Prompt p;
    p.batch = prompt.input_ids.size(0);
    p.in = prompt;
    p.in.input_ids = prompt.input_ids.to(dev, torch::kLong);
    p.in.attention_mask = prompt.attention_mask.defined()
                              ? prompt.attention_mask.to(dev, torch::kLong)
                              : torch::ones_like(p.in.input_ids);
    p.in.position_ids = PositionsFromMask(p.in.attention_mask);
    if (prompt.token_type_ids.defined())
      p.in.token_type_ids = prompt.token_type_ids.to(dev);
    if (prompt.pixel_values.defined())
      p.in.pixel_values = prompt.pixel_values.to(dev);

    std::unique_ptr<Feeder> feeder = MakeFeeder(model, p, opts);
    return DecodeLoop(*feeder, p.batch, dev, opts);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("generate: ", e.what_without_backtrace()));
  }
}

}  // namespace gemma
