#include "jobs/optimizer.h"

#include <torch/torch.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace gemma {

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params,
             AdamWOptions options)
    : options_(options) {
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : params) {
    Slot s;
    s.name = name;
    s.param = p;
    s.master = p.scalar_type() == torch::kFloat32
                   ? p
                   : p.detach().to(torch::kFloat32).clone();
    s.exp_avg = torch::zeros_like(s.master);
    s.exp_avg_sq = torch::zeros_like(s.master);
    s.decay = Decays(name, p);
    slots_.push_back(std::move(s));
  }
}

bool AdamW::Decays(const std::string& name, const at::Tensor& p) {
  (void)name;
  return p.dim() >= 2;
}

AdamWStepScalars::AdamWStepScalars(const AdamWOptions& options, int64_t step,
                                   double lr)
    : lr(lr),
      beta1(options.beta1),
      beta2(options.beta2),
      eps(options.eps),
      weight_decay(options.weight_decay),
      step_size(lr /
                (1.0 - std::pow(options.beta1, static_cast<double>(step)))),
      bias2_sqrt(
          std::sqrt(1.0 - std::pow(options.beta2, static_cast<double>(step)))) {
}

void AdamWUpdate(const AdamWStepScalars& s, bool decay, const at::Tensor& grad,
                 at::Tensor& master, at::Tensor& exp_avg,
                 at::Tensor& exp_avg_sq) {
  at::Tensor g = grad;
  if (g.scalar_type() != torch::kFloat32) g = g.to(torch::kFloat32);
  if (decay && s.weight_decay != 0.0) master.mul_(1.0 - s.lr * s.weight_decay);
  exp_avg.lerp_(g, 1.0 - s.beta1);
  exp_avg_sq.mul_(s.beta2).addcmul_(g, g, 1.0 - s.beta2);
  at::Tensor denom = (exp_avg_sq.sqrt() / s.bias2_sqrt).add_(s.eps);
  master.addcdiv_(exp_avg, denom, -s.step_size);
}

void AdamW::Step(double lr) {
  Step(lr, std::vector<bool>(slots_.size(), true));
}

void AdamW::Step(double lr, const std::vector<bool>& update) {
  TORCH_CHECK(update.size() == slots_.size(), "AdamW::Step: ", update.size(),
              " flags for ", slots_.size(), " parameters");
  torch::NoGradGuard no_grad;
  ++steps_;
  const AdamWStepScalars scalars(options_, steps_, lr);
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    at::Tensor g = s.param.grad();
    if (!g.defined() || !update[i]) continue;
    AdamWUpdate(scalars, s.decay, g, s.master, s.exp_avg, s.exp_avg_sq);
    if (!s.master.is_same(s.param)) s.param.copy_(s.master);
  }
}

std::map<std::string, at::Tensor> AdamW::StateTensors() const {
  std::map<std::string, at::Tensor> out;
  for (const Slot& s : slots_) {
    out["exp_avg/" + s.name] = s.exp_avg;
    out["exp_avg_sq/" + s.name] = s.exp_avg_sq;
    if (!s.master.is_same(s.param)) out["master/" + s.name] = s.master;
  }
  return out;
}

absl::Status AdamW::LoadState(const std::map<std::string, at::Tensor>& state,
                              int64_t steps) {
  StateLoader loader(state);
  for (const Slot& s : slots_) {
    GEMMA_RETURN_IF_ERROR(loader.Take("exp_avg/" + s.name, s.exp_avg));
    GEMMA_RETURN_IF_ERROR(loader.Take("exp_avg_sq/" + s.name, s.exp_avg_sq));
    if (!s.master.is_same(s.param))
      GEMMA_RETURN_IF_ERROR(loader.Take("master/" + s.name, s.master));
  }
  loader.Apply();
  steps_ = steps;
  return absl::OkStatus();
}

absl::Status StateLoader::Take(const std::string& key, const at::Tensor& to) {
  auto it = state_.find(key);
  if (it == state_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer state: missing tensor ", key));
  }
  if (it->second.sizes() != to.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer state: ", key, " has shape ", c10::str(it->second.sizes()),
        ", expected ", c10::str(to.sizes())));
  }
  copies_.emplace_back(to, it->second);
  return absl::OkStatus();
}

void StateLoader::Apply() {
  torch::NoGradGuard no_grad;
  for (auto& [to, from] : copies_) to.copy_(from);
}

}  // namespace gemma
