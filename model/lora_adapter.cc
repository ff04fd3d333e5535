#include "model/lora_adapter.h"

#include <torch/torch.h>

#include <cmath>
#include <utility>

namespace gemma {
namespace {

// Row norms ||w||_2 over dim 1, in fp32 math, returned in w's dtype, of the
// whole weight `w` is `split`'s shard of. Whole rows (no split, column-
// parallel): w's own row norms. Row-parallel (w holds some columns of every
// row): collective over split.comm, the fp32 sums of squares of this rank's
// columns summed over the group. Not differentiable (DoRA detaches the norm).
torch::Tensor RowNorm(const ProjectionSplit& split, const torch::Tensor& w) {
  if (split.kind != ProjectionSplit::Kind::kRow) {
    return torch::linalg_vector_norm(w, 2, {1}).to(w.scalar_type());
  }
  torch::NoGradGuard no_grad;
  Comm& comm = *split.comm;
  torch::Tensor squares =
      w.detach().to(comm.device(), torch::kFloat32).square().sum(1);
  comm.AllReduceSum(squares);
  return squares.sqrt().to(w.device(), w.scalar_type());
}

}  // namespace

LoraAdapter::LoraAdapter(int64_t in_features, int64_t out_features,
                         int64_t rank_, double alpha, double dropout_,
                         ProjectionSplit split_)
    : rank(rank_),
      scaling(alpha / static_cast<double>(rank_)),
      dropout(dropout_),
      split(std::move(split_)) {
  const bool row = split.kind == ProjectionSplit::Kind::kRow;
  torch::Tensor whole_a = torch::empty({rank, row ? split.in : in_features});
  {
    torch::NoGradGuard no_grad;
    // peft: nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5)).
    torch::nn::init::kaiming_uniform_(whole_a, std::sqrt(5.0));
  }
  a = register_parameter(
      "a", row ? ShardOf(split, whole_a, 1).contiguous() : whole_a);
  b = register_parameter("b", torch::zeros({out_features, rank}));
  TORCH_CHECK(a.size(1) == in_features, "LoRA: A has ", a.size(1),
              " columns for a projection of ", in_features, " inputs");
  if (split.kind == ProjectionSplit::Kind::kColumn && split.has_replicas()) {
    ProjectionSplit s = split;
    b.register_hook(
        [s](const torch::Tensor& grad) { return SumReplicas(s, grad); });
  }
}

torch::Tensor LoraAdapter::Dropped(const torch::Tensor& x) {
  if (dropout <= 0 || !is_training()) return x;
  if (split.kind != ProjectionSplit::Kind::kRow) {
    return torch::dropout(x, dropout, /*train=*/true);
  }
  // ATen's (CPU) dropout: a Bernoulli(1 - p) mask over the whole input,
  // scaled by 1 / (1 - p); this rank keeps its columns of it.
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = split.in;
  torch::Tensor noise = torch::empty(shape, x.options().requires_grad(false))
                            .bernoulli_(1 - dropout)
                            .div_(1 - dropout);
  return x * ShardOf(split, noise, x.dim() - 1);
}

torch::Tensor LoraAdapter::Forward(const torch::Tensor& x,
                                   const torch::Tensor& weight,
                                   const torch::Tensor& bias) {
  torch::Tensor y = torch::nn::functional::linear(x, weight, bias);
  const torch::Tensor xd = Dropped(x);
  return y + torch::nn::functional::linear(torch::nn::functional::linear(xd, a),
                                           b) *
                 scaling;
}

torch::Tensor LoraAdapter::DeltaWeight() const {
  return torch::matmul(b, a) * scaling;
}

torch::Tensor LoraAdapter::MergedWeight(const torch::Tensor& weight) const {
  return (weight + DeltaWeight().to(weight.scalar_type()))
      .to(weight.scalar_type());
}

DoraAdapter::DoraAdapter(const torch::Tensor& base_weight, int64_t rank_,
                         double alpha, double dropout_, ProjectionSplit split_)
    : LoraAdapter(base_weight.size(1), base_weight.size(0), rank_, alpha,
                  dropout_, std::move(split_)) {
  {
    torch::NoGradGuard no_grad;
    m = register_parameter(
        "m", RowNorm(split, base_weight.detach().to(torch::kFloat32)));
  }
  if (split.kind == ProjectionSplit::Kind::kColumn && split.has_replicas()) {
    ProjectionSplit s = split;
    m.register_hook(
        [s](const torch::Tensor& grad) { return SumReplicas(s, grad); });
  }
}

torch::Tensor DoraAdapter::Forward(const torch::Tensor& x,
                                   const torch::Tensor& weight,
                                   const torch::Tensor& bias) {
  // peft 0.21 lora.Linear.forward + DoraLinearLayer.forward.
  //
  // Row-parallel shard: x, W, A are this rank's columns, so result,
  // base_result and lora_result are partial sums over the group (as the
  // layer's ReduceFromTpRegion sums them afterwards), while norm (whole rows:
  // collective) and hence mag are the same on every rank. The adapter's
  // change to the projection's output, (mag - 1) * base_result + mag * s *
  // lora_result, is linear in those partials, so it sums to the TP = 1 one;
  // the bias (none on Gemma's row-parallel projections) enters only through
  // result, exactly as the projection without adapter adds it.
  torch::Tensor result = torch::nn::functional::linear(x, weight, bias);
  const torch::Tensor lora_weight = torch::matmul(b, a).to(x.scalar_type());
  const torch::Tensor w = weight.to(x.scalar_type());
  const torch::Tensor norm =
      RowNorm(split, w + scaling * lora_weight.detach()).detach();
  const torch::Tensor mag = (m / norm).view({1, -1});
  torch::Tensor xd = x;
  torch::Tensor base_result;
  if (dropout <= 0 || !is_training()) {
    base_result = bias.defined() ? result - bias : result;
  } else {
    xd = Dropped(x);
    base_result = torch::nn::functional::linear(xd, w);
  }
  const torch::Tensor lora_result =
      torch::nn::functional::linear(torch::nn::functional::linear(xd, a), b);
  return result + (mag - 1) * base_result + mag * lora_result * scaling;
}

torch::Tensor DoraAdapter::MergedWeight(const torch::Tensor& weight) const {
  const torch::Tensor merged =
      weight.to(torch::kFloat32) + DeltaWeight().to(torch::kFloat32);
  const torch::Tensor factor = (m.to(torch::kFloat32) / RowNorm(split, merged));
  return (factor.view({-1, 1}) * merged).to(weight.scalar_type());
}

}  // namespace gemma
