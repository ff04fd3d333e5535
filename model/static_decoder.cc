#include "model/static_decoder.h"

#include <torch/torch.h>

#include <utility>

namespace gemma {

StaticDecoder::StaticDecoder(Gemma3Model model, int64_t capacity)
    : model_(std::move(model)), capacity_(capacity) {
  TORCH_CHECK(capacity >= 1, "StaticDecoder: capacity must be >= 1, got ",
              capacity);
}

torch::Tensor StaticDecoder::Prefill(const ModelInputs& prompt) {
  TORCH_CHECK(fed_ == 0, "StaticDecoder: Prefill runs once");
  TORCH_CHECK(prompt.input_ids.defined() && prompt.input_ids.dim() == 2 &&
                  prompt.input_ids.size(1) > 0,
              "StaticDecoder: input_ids must be a non-empty [batch, length]");
  const int64_t b = prompt.input_ids.size(0), l = prompt.input_ids.size(1);
  TORCH_CHECK(l <= capacity_, "StaticDecoder: a prompt of ", l,
              " tokens does not fit ", capacity_, " slots");
  cache_ = KvCache::Static(model_->config().text, capacity_);
  torch::Tensor logits = model_->forward(prompt, &cache_).select(1, l - 1);

  const c10::Device dev = logits.device();
  const auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(dev);
  torch::Tensor mask = prompt.attention_mask.defined()
                           ? prompt.attention_mask.to(dev, torch::kLong)
                           : torch::ones({b, l}, long_opts);
  torch::Tensor positions = prompt.position_ids.defined()
                                ? prompt.position_ids.to(dev, torch::kLong)
                                : torch::arange(l, long_opts).unsqueeze(0);
  padding_ = torch::zeros({b, capacity_}, long_opts);
  padding_.narrow(1, 0, l).copy_(mask);
  index_ = torch::full({1}, l, long_opts);
  position_ = (positions.narrow(1, l - 1, 1) + 1).expand({b, 1}).contiguous();
  tokens_ = torch::zeros({b, 1}, long_opts);
  cache_.SetStepIndex(index_);

  const auto dtype = model_->text->embed->weight.scalar_type();
  torch::Tensor all = torch::arange(capacity_, long_opts).unsqueeze(0);
  for (int t = 0; t < 2; ++t) {
    const LayerType type = t == 0 ? LayerType::kSliding : LayerType::kFull;
    bool present = false;
    for (LayerType lt : model_->config().text.layer_types)
      present |= lt == type;
    if (!present) continue;
    auto [cos, sin] = model_->text->Rope(type, all, dtype);  // [1, C, hd]
    cos_table_[t] = cos.squeeze(0);
    sin_table_[t] = sin.squeeze(0);
  }
  fed_ = l;
  return logits;
}

void StaticDecoder::SetTokens(const torch::Tensor& tokens) {
  TORCH_CHECK(fed_ > 0, "StaticDecoder: SetTokens before Prefill");
  TORCH_CHECK(tokens.numel() == tokens_.size(0), "StaticDecoder: expected ",
              tokens_.size(0), " tokens, got ", tokens.numel());
  tokens_.copy_(tokens.reshape({-1, 1}));
}

torch::Tensor StaticDecoder::RunStep() {
  padding_.index_fill_(1, index_, 1);
  ModelInputs in;
  in.input_ids = tokens_;
  torch::Tensor embeds = model_->Embeddings(in);
  StaticStepInputs step;
  const int64_t b = tokens_.size(0);
  torch::Tensor pos = position_.view({b});
  for (int t = 0; t < 2; ++t) {
    if (!cos_table_[t].defined()) continue;
    step.cos[t] = cos_table_[t].index_select(0, pos).unsqueeze(1);
    step.sin[t] = sin_table_[t].index_select(0, pos).unsqueeze(1);
  }
  step.padding = padding_;
  step.cache = &cache_;
  torch::Tensor hidden = model_->text->DecodeStep(embeds, step);
  torch::Tensor logits = model_->text->Logits(hidden).select(1, 0);
  index_.add_(1);
  position_.add_(1);
  return logits;
}

torch::Tensor StaticDecoder::Step() {
  TORCH_CHECK(fed_ > 0, "StaticDecoder: Step before Prefill");
  TORCH_CHECK(fed_ < capacity_, "StaticDecoder: the cache's ", capacity_,
              " slots are full");
  ++fed_;
  return graph_.captured() ? graph_.Replay() : RunStep();
}

void StaticDecoder::WarmUp(int64_t steps) {
  TORCH_CHECK(fed_ > 0, "StaticDecoder: WarmUp before Prefill");
  TORCH_CHECK(fed_ + steps <= capacity_, "StaticDecoder: ", steps,
              " warm-up steps do not fit the free slots");
  torch::Tensor index = index_.clone(), position = position_.clone(),
                padding = padding_.clone();
  for (int64_t i = 0; i < steps; ++i) RunStep();
  index_.copy_(index);
  position_.copy_(position);
  padding_.copy_(padding);
}

bool StaticDecoder::CaptureGraph() {
  TORCH_CHECK(fed_ > 0, "StaticDecoder: CaptureGraph before Prefill");
  if (graph_.captured()) return true;
  if (!CudaGraphsBuilt() || !index_.is_cuda() || model_->text->tp().split() ||
      capacity_ - fed_ < kWarmupSteps) {
    return false;
  }
  return graph_.Capture(
      index_.device(), [this] { WarmUp(kWarmupSteps); },
      [this] { return RunStep(); });
}

}  // namespace gemma
