#include "jobs/optimizer.h"

#include <torch/torch.h>

#include <array>
#include <cmath>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

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

void AdamW::Step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bias1 = 1.0 - std::pow(b1, static_cast<double>(steps_));
  const double bias2 = 1.0 - std::pow(b2, static_cast<double>(steps_));
  const double step_size = lr / bias1;
  const double bias2_sqrt = std::sqrt(bias2);
  for (Slot& s : slots_) {
    at::Tensor g = s.param.grad();
    if (!g.defined()) continue;
    if (g.scalar_type() != torch::kFloat32) g = g.to(torch::kFloat32);
    if (s.decay && options_.weight_decay != 0.0) {
      s.master.mul_(1.0 - lr * options_.weight_decay);
    }
    s.exp_avg.lerp_(g, 1.0 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1.0 - b2);
    at::Tensor denom = (s.exp_avg_sq.sqrt() / bias2_sqrt).add_(options_.eps);
    s.master.addcdiv_(s.exp_avg, denom, -step_size);
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
  auto find = [&](const std::string& key,
                  const at::Tensor& like) -> absl::StatusOr<at::Tensor> {
    auto it = state.find(key);
    if (it == state.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer state: missing tensor ", key));
    }
    if (it->second.sizes() != like.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer state: ", key, " has shape ", c10::str(it->second.sizes()),
          ", expected ", c10::str(like.sizes())));
    }
    return it->second;
  };
  // Check everything before changing anything.
  std::vector<std::array<at::Tensor, 3>> loaded;
  for (const Slot& s : slots_) {
    std::array<at::Tensor, 3> t;
    auto m = find("exp_avg/" + s.name, s.exp_avg);
    if (!m.ok()) return m.status();
    auto v = find("exp_avg_sq/" + s.name, s.exp_avg_sq);
    if (!v.ok()) return v.status();
    t[0] = *m;
    t[1] = *v;
    if (!s.master.is_same(s.param)) {
      auto w = find("master/" + s.name, s.master);
      if (!w.ok()) return w.status();
      t[2] = *w;
    }
    loaded.push_back(t);
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < slots_.size(); ++i) {
    slots_[i].exp_avg.copy_(loaded[i][0]);
    slots_[i].exp_avg_sq.copy_(loaded[i][1]);
    if (loaded[i][2].defined()) slots_[i].master.copy_(loaded[i][2]);
  }
  steps_ = steps;
  return absl::OkStatus();
}

}  // namespace gemma
