// Test fixtures for jobs/grad_sync.h and jobs/dist_optimizer.h: a toy
// network whose gradients a test can compute without any collective, so the
// reduced gradients of a DP run can be checked against plain sums.
#ifndef GEMMA_JOBS_DP_TEST_UTIL_H_
#define GEMMA_JOBS_DP_TEST_UTIL_H_

#include <torch/torch.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "jobs/grad_sync.h"

// Inside RunGlooRanks (which names the rank): a failed check becomes the
// rank's error.
#define RANK_CHECK(cond, ...)                              \
  do {                                                     \
    if (!(cond))                                           \
      return absl::InternalError(                          \
          absl::StrCat(#cond, " failed ", ##__VA_ARGS__)); \
  } while (0)

namespace gemma {

// tanh layers h = tanh(h W_i + b_i) of `width` (W fp32, b bf16 when
// `bf16_bias`: two buffers), plus two extra parameters first in the list:
// "unused" (never in the loss) and "rank1_only" (in the loss of DP rank 1
// only). Same values on every rank (fixed seed).
struct ToyNet {
  std::vector<TrainParam> params;
  int layers = 0;

  static ToyNet Make(int layers, int width, bool bf16_bias) {
    ToyNet net;
    net.layers = layers;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
    auto add = [&](const std::string& name, at::Tensor t) {
      net.params.push_back({name, t.set_requires_grad(true)});
    };
    add("unused", at::normal(0.0, 0.5, {width, 3}, gen));
    add("rank1_only", at::normal(0.0, 0.5, {width}, gen));
    for (int i = 0; i < layers; ++i) {
      add(absl::StrCat("w", i), at::normal(0.0, 0.4, {width, width}, gen));
      at::Tensor b = at::normal(0.0, 0.1, {width}, gen);
      add(absl::StrCat("b", i), bf16_bias ? b.to(at::kBFloat16) : b);
    }
    return net;
  }

  // A copy with fresh leaves (same values).
  ToyNet Clone() const {
    ToyNet c;
    c.layers = layers;
    for (const auto& p : params) {
      c.params.push_back({p.name,
                          p.param.detach().clone().set_requires_grad(true),
                          p.tp_sharded, p.tp_partial});
    }
    return c;
  }

  at::Tensor Param(const std::string& name) const {
    for (const auto& p : params) {
      if (p.name == name) return p.param;
    }
    return {};
  }

  // The loss of micro batch `micro` of DP rank `rank`.
  at::Tensor Loss(int rank, int micro) const {
    const int64_t width = Param("w0").size(0);
    auto gen =
        at::make_generator<at::CPUGeneratorImpl>(100 + 10 * rank + micro);
    at::Tensor h = at::normal(0.0, 1.0, {4, width}, gen);
    for (int i = 0; i < layers; ++i) {
      h = at::tanh(h.mm(Param(absl::StrCat("w", i))) +
                   Param(absl::StrCat("b", i)).to(at::kFloat));
    }
    at::Tensor loss = (h * h).sum() / 7.0;
    if (rank == 1) loss = loss + (h * Param("rank1_only")).sum();
    return loss;
  }

  // Runs micro batches first..first+accum-1 of `rank` and returns the
  // accumulated gradient of every parameter (zeros where none).
  std::vector<at::Tensor> LocalGrads(int rank, int accum, int first = 0) const {
    ToyNet c = Clone();
    for (int k = 0; k < accum; ++k) c.Loss(rank, first + k).backward();
    std::vector<at::Tensor> out;
    for (const auto& p : c.params) {
      out.push_back(p.param.grad().defined() ? p.param.grad()
                                             : at::zeros_like(p.param));
    }
    return out;
  }
};

}  // namespace gemma

#endif  // GEMMA_JOBS_DP_TEST_UTIL_H_
