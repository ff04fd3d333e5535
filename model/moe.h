// Gemma 4 mixture of experts (HF Gemma4TextRouter + Gemma4TextExperts, and
// the MoE half of Gemma4TextDecoderLayer), with expert parallelism.
//
// Router (input x [T, H], the post-attention residual stream):
//   r = N0(x) * scale * H^-1/2;  p = softmax(r W^T) in fp32 over E experts;
//   (w, idx) = topk(p, K);  w /= sum(w);  w *= expert_scale[idx].
// Experts e: y_e(x) = (gelu_tanh(x G_e^T) * (x U_e^T)) D_e^T with
//   gate_up [E, 2 Im, H] = [G_e; U_e] per expert and down [E, H, Im].
// Block: out = post_norm( sum_k w_k * y_{idx_k}( pre_norm(x) ) ).
// N0 is the scale-less RMS norm, N4 (pre_norm/post_norm) multiplies by its
// weight directly (Gemma 4 norms are not zero-centred; both: Gemma4RmsNorm).
//
// Our parameter names under a block ("text.layers.{i}.moe."):
//   pre_norm.weight [H], post_norm.weight [H], router.proj.weight [E, H],
//   router.scale [H], router.expert_scale [E], experts.gate_up [E, 2 Im, H],
//   experts.down [E, H, Im]  (E = the experts this EP rank owns).
//
// Expert parallelism: the `ep` group's rank r owns experts
// [r E / ep, (r + 1) E / ep) (E divisible by ep). Every token-expert pair is
// sent with Comm::AllToAll (variable sizes) to the owner, computed there
// (one GEMM pair per local expert, a loop on CPU) and sent back, then combined
// with the routing weights. The exchange is differentiable (the backward is
// the reverse all-to-all). With SingleRankComm the exchange is the identity
// and everything stays local. All ranks of the EP group must call forward
// together (same number of times); their token counts may differ.
#ifndef GEMMA_MODEL_MOE_H_
#define GEMMA_MODEL_MOE_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <memory>

#include "model/comm.h"
#include "model/layers.h"

namespace gemma {

// x * (mean(x^2) + eps)^-1/2 [* weight], in fp32, cast back to x's dtype
// (HF Gemma4RMSNorm). `weight` undefined: the scale-less norm.
torch::Tensor Gemma4RmsNorm(const torch::Tensor& x, const torch::Tensor& weight,
                            double eps);

// The Gemma 4 norm as a module with parameter "weight" [dim] (init 1).
class Gemma4NormImpl : public torch::nn::Module {
 public:
  Gemma4NormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  double eps;
  torch::Tensor weight;
};
TORCH_MODULE(Gemma4Norm);

// The routing of T tokens.
struct MoeRouting {
  torch::Tensor probs;    // [T, E] fp32 softmax
  torch::Tensor weights;  // [T, K] renormalised * expert_scale (fp32)
  torch::Tensor index;    // [T, K] int64 expert ids (global)
};

class MoeRouterImpl : public torch::nn::Module {
 public:
  MoeRouterImpl(int64_t hidden_size, int64_t num_experts, int64_t top_k,
                double eps);
  MoeRouting forward(const torch::Tensor& x);  // x [T, H]

  int64_t hidden_size, num_experts, top_k;
  double eps;
  Projection proj{nullptr};    // [E, H]
  torch::Tensor scale;         // [H]
  torch::Tensor expert_scale;  // [E]
};
TORCH_MODULE(MoeRouter);

// The experts one EP rank owns: global ids [first, first + num_local).
class MoeExpertsImpl : public torch::nn::Module {
 public:
  MoeExpertsImpl(int64_t hidden_size, int64_t intermediate, int64_t first,
                 int64_t num_local);
  // x [N, H] rows grouped by local expert: counts[e] rows for local expert e
  // in order (sum = N). Returns [N, H].
  torch::Tensor forward(const torch::Tensor& x,
                        const std::vector<int64_t>& counts);

  int64_t hidden_size, intermediate, first, num_local;
  // On CUDA in bf16 (Hopper or newer), both projections run as one grouped
  // GEMM over the local experts (at::_grouped_mm) instead of a loop of
  // per-expert GEMMs; GEMMA_MOE_GROUPED_GEMM=0 or false here keeps the loop.
  bool grouped_gemm = true;
  torch::Tensor gate_up;  // [num_local, 2 Im, H]
  torch::Tensor down;     // [num_local, H, Im]
};
TORCH_MODULE(MoeExperts);

struct MoeOptions {
  int64_t hidden_size = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t intermediate = 0;  // per expert
  double eps = 1e-6;
};

class MoeBlockImpl : public torch::nn::Module {
 public:
  // `ep`: the expert-parallel group (null = SingleRankComm). `tp`: the
  // tensor-parallel group of the surrounding layer (null: none). Under TP the
  // block's input is replicated over the TP group; each TP rank routes its
  // chunk of the tokens (ScatterRowsToTpRegion) through the EP group, and the
  // chunks are gathered back, so no token is computed twice (the ep group may
  // span several TP groups: Megatron's MoE parallel folding). The block's
  // router and norm weights then see only this rank's tokens: their
  // gradients are partial sums over the TP group.
  MoeBlockImpl(const MoeOptions& options, std::shared_ptr<Comm> ep = nullptr,
               std::shared_ptr<Comm> tp = nullptr);

  // router_in [.., H]: what the router sees (the residual stream);
  // expert_in is pre_norm(router_in). Returns post_norm(moe output), same
  // shape as router_in.
  torch::Tensor forward(const torch::Tensor& router_in);

  // Tokens routed to each global expert (top-k assignments of this rank's
  // tokens, its TP chunk under TP) summed over forwards since the last reset: [E] int64.
  torch::Tensor TokensPerExpert() const { return tokens_per_expert_; }
  void ResetStats();

  MoeOptions options;
  Gemma4Norm pre_norm{nullptr};
  Gemma4Norm post_norm{nullptr};
  MoeRouter router{nullptr};
  MoeExperts experts{nullptr};

 private:
  torch::Tensor Route(const torch::Tensor& x);  // [T, H] -> [T, H]

  std::shared_ptr<Comm> ep_;
  std::shared_ptr<Comm> tp_;
  torch::Tensor tokens_per_expert_;
};
TORCH_MODULE(MoeBlock);

// Whether MoeExperts can use the grouped GEMM for `x` (see grouped_gemm).
bool MoeGroupedGemmSupported(const torch::Tensor& x, int64_t hidden,
                             int64_t intermediate);

// Sends rows of `x` (grouped by destination rank, send_counts[r] rows to rank
// r) through `comm` and returns the rows received, grouped by source rank;
// *recv_counts gets their counts. Differentiable in x.
torch::Tensor AllToAllRows(Comm& comm, const torch::Tensor& x,
                           const std::vector<int64_t>& send_counts,
                           std::vector<int64_t>* recv_counts);

}  // namespace gemma

#endif  // GEMMA_MODEL_MOE_H_
