#include "model/moe.h"

#include <torch/torch.h>

#ifdef GEMMA_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "model/fused_ops.h"
#include "model/recompute.h"
#include "model/tensor_parallel.h"

namespace gemma {

torch::Tensor Gemma4RmsNorm(const torch::Tensor& x, const torch::Tensor& weight,
                            double eps) {
  if (FusedApplies(x)) {
    // One kernel each way (model/fused_ops.h), the same fp32 math.
    return FusedRmsNorm(x, weight, eps, /*offset=*/0.0);
  }
  torch::Tensor x32 = x.to(torch::kFloat);
  torch::Tensor out =
      x32 * torch::pow(x32.pow(2).mean(-1, /*keepdim=*/true) + eps, -0.5);
  if (weight.defined()) out = out * weight.to(torch::kFloat);
  return out.to(x.scalar_type());
}

Gemma4NormImpl::Gemma4NormImpl(int64_t dim, double eps_in) : eps(eps_in) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor Gemma4NormImpl::forward(const torch::Tensor& x) {
  return Gemma4RmsNorm(x, weight, eps);
}

MoeRouterImpl::MoeRouterImpl(int64_t h, int64_t e, int64_t k, double eps_in)
    : hidden_size(h), num_experts(e), top_k(k), eps(eps_in) {
  proj = register_module("proj", Projection(h, e, /*bias=*/false));
  scale = register_parameter("scale", torch::ones({h}));
  expert_scale = register_parameter("expert_scale", torch::ones({e}));
}

MoeRouting MoeRouterImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = Gemma4RmsNorm(x, torch::Tensor(), eps);
  h = h * scale * std::pow(static_cast<double>(hidden_size), -0.5);
  MoeRouting r;
  r.probs = torch::softmax(proj(h), -1, torch::kFloat);
  auto [w, idx] = torch::topk(r.probs, top_k, -1);
  w = w / w.sum(-1, /*keepdim=*/true);
  r.weights = w * expert_scale.index_select(0, idx.reshape(-1)).view_as(idx);
  r.index = idx;
  return r;
}

MoeExpertsImpl::MoeExpertsImpl(int64_t h, int64_t im, int64_t first_in,
                               int64_t n)
    : hidden_size(h), intermediate(im), first(first_in), num_local(n) {
  gate_up = register_parameter("gate_up", torch::randn({n, 2 * im, h}) * 0.02);
  down = register_parameter("down", torch::randn({n, h, im}) * 0.02);
}

namespace {

// Identity whose backward hands on a contiguous gradient: the grouped GEMM's
// backward (torch 2.11) refuses expanded gradients such as those of a sum.
struct ContiguousGrad : public torch::autograd::Function<ContiguousGrad> {
  static torch::Tensor forward(torch::autograd::AutogradContext*,
                               const torch::Tensor& x) {
    return x.view_as(x);
  }
  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext*, torch::autograd::variable_list g) {
    return {g[0].contiguous()};
  }
};

}  // namespace

bool MoeGroupedGemmSupported(const torch::Tensor& x, int64_t hidden,
                             int64_t intermediate) {
  // cuBLAS grouped GEMM (torch._grouped_mm): bf16 on Hopper or newer, with
  // 16-byte aligned rows (dims multiples of 8).
  if (!x.is_cuda() || x.scalar_type() != torch::kBFloat16) return false;
  if (hidden % 8 != 0 || intermediate % 8 != 0) return false;
  const char* env = std::getenv("GEMMA_MOE_GROUPED_GEMM");
  if (env != nullptr && std::string(env) == "0") return false;
#ifdef GEMMA_WITH_CUDA
  const auto* prop = at::cuda::getDeviceProperties(x.device().index());
  return prop != nullptr && prop->major >= 9;
#else
  return false;
#endif
}

torch::Tensor MoeExpertsImpl::forward(const torch::Tensor& x,
                                      const std::vector<int64_t>& counts) {
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == num_local,
              "MoeExperts: ", counts.size(), " counts for ", num_local,
              " experts");
  if (grouped_gemm && MoeGroupedGemmSupported(x, hidden_size, intermediate)) {
    // One grouped GEMM per projection over all local experts: group e is
    // rows [offs[e-1], offs[e]) of x times expert e's weight.
    std::vector<int32_t> ends(counts.size());
    int64_t total = 0;
    for (size_t e = 0; e < counts.size(); ++e) {
      total += counts[e];
      ends[e] = static_cast<int32_t>(total);
    }
    torch::Tensor offs = torch::tensor(ends, torch::kInt32)
                             .to(x.device(), /*non_blocking=*/true);
    torch::Tensor gu = at::_grouped_mm(x, gate_up.transpose(1, 2), offs);
    std::vector<torch::Tensor> halves = gu.chunk(2, -1);
    torch::Tensor h = torch::gelu(halves[0], "tanh") * halves[1];
    return ContiguousGrad::apply(
        at::_grouped_mm(h, down.transpose(1, 2), offs));
  }
  std::vector<torch::Tensor> parts = x.split_with_sizes(counts, 0);
  std::vector<torch::Tensor> outs;
  outs.reserve(parts.size());
  for (int64_t e = 0; e < num_local; ++e) {
    const torch::Tensor& p = parts[static_cast<size_t>(e)];
    if (p.size(0) == 0) continue;
    std::vector<torch::Tensor> gu =
        torch::nn::functional::linear(p, gate_up[e]).chunk(2, -1);
    torch::Tensor y = torch::nn::functional::linear(
        torch::gelu(gu[0], "tanh") * gu[1], down[e]);
    outs.push_back(y);
  }
  // No rows for any local expert: still an output of x, so that autograd
  // runs the combining all-to-all's backward on this rank as on its peers.
  if (outs.empty()) return x.narrow(0, 0, 0) * 0;
  return torch::cat(outs, 0);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::vector<int64_t> Rows(const std::vector<at::Tensor>& parts) {
  std::vector<int64_t> n;
  n.reserve(parts.size());
  for (const auto& p : parts) n.push_back(p.size(0));
  return n;
}

torch::Tensor Exchange(Comm& comm, const torch::Tensor& x,
                       const std::vector<int64_t>& send,
                       std::vector<int64_t>* recv) {
  std::vector<torch::Tensor> parts;
  for (auto& p : x.split_with_sizes(send, 0)) parts.push_back(p.contiguous());
  std::vector<torch::Tensor> got = comm.AllToAll(parts);
  *recv = Rows(got);
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = 0;
  if (got.empty()) return x.new_empty(shape);
  return torch::cat(got, 0);
}

// All-to-all of rows whose backward is the reverse all-to-all.
class AllToAllFn : public torch::autograd::Function<AllToAllFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x,
                               int64_t comm_ptr, std::vector<int64_t> send) {
    Comm* comm = reinterpret_cast<Comm*>(comm_ptr);
    std::vector<int64_t> recv;
    torch::Tensor out = Exchange(*comm, x, send, &recv);
    ctx->saved_data["comm"] = comm_ptr;
    ctx->saved_data["recv"] = recv;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Comm* comm = reinterpret_cast<Comm*>(ctx->saved_data["comm"].toInt());
    std::vector<int64_t> recv = ctx->saved_data["recv"].toIntVector();
    std::vector<int64_t> back;
    torch::Tensor g = Exchange(*comm, grads[0].contiguous(), recv, &back);
    return {g, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor AllToAllRows(Comm& comm, const torch::Tensor& x,
                           const std::vector<int64_t>& send_counts,
                           std::vector<int64_t>* recv_counts) {
  if (comm.size() == 1) {
    *recv_counts = send_counts;
    return x;
  }
  torch::Tensor out =
      AllToAllFn::apply(x, reinterpret_cast<int64_t>(&comm), send_counts);
  // The receive counts are needed by the caller too: the exchange of counts
  // is cheap, repeat it without autograd. On the rows' device: NCCL (the
  // CUDA backend) takes no CPU tensors.
  std::vector<torch::Tensor> cnt;
  for (int64_t n : send_counts)
    cnt.push_back(torch::full({1}, n, x.options().dtype(torch::kLong)));
  *recv_counts = {};
  for (const auto& t : comm.AllToAll(cnt))
    recv_counts->push_back(t.item<int64_t>());
  return out;
}

MoeBlockImpl::MoeBlockImpl(const MoeOptions& o, std::shared_ptr<Comm> ep,
                           std::shared_ptr<Comm> tp)
    : options(o),
      ep_(ep ? std::move(ep) : std::make_shared<SingleRankComm>()),
      tp_(std::move(tp)) {
  const int64_t p = ep_->size();
  TORCH_CHECK(o.num_experts % p == 0, "MoE: ", o.num_experts,
              " experts do not split over ", p, " expert-parallel ranks");
  const int64_t local = o.num_experts / p;
  pre_norm = register_module("pre_norm", Gemma4Norm(o.hidden_size, o.eps));
  post_norm = register_module("post_norm", Gemma4Norm(o.hidden_size, o.eps));
  router = register_module(
      "router", MoeRouter(o.hidden_size, o.num_experts, o.top_k, o.eps));
  experts = register_module("experts", MoeExperts(o.hidden_size, o.intermediate,
                                                  ep_->rank() * local, local));
  ResetStats();
}

void MoeBlockImpl::ResetStats() {
  tokens_per_expert_ = torch::zeros({options.num_experts}, torch::kLong);
}

torch::Tensor MoeBlockImpl::forward(const torch::Tensor& router_in) {
  torch::Tensor x = router_in.reshape({-1, options.hidden_size});
  if (tp_ && tp_->size() > 1) {
    const int64_t n = x.size(0);
    x = GatherRowsFromTpRegion(Route(ScatterRowsToTpRegion(x, *tp_)), n, *tp_);
  } else {
    x = Route(x);
  }
  return x.reshape(router_in.sizes());
}

torch::Tensor MoeBlockImpl::Route(const torch::Tensor& x) {
  const int64_t e_all = options.num_experts;
  const int64_t t = x.size(0), k = options.top_k;
  MoeRouting routing = router(x);

  torch::Tensor flat = routing.index.reshape({-1});  // [T K]
  torch::Tensor counts = torch::bincount(flat.cpu(), {}, e_all);
  if (!InRecompute()) tokens_per_expert_ += counts;  // count a forward once

  // Token-expert pairs sorted by expert (stable: token order within one).
  torch::Tensor order =
      std::get<1>(torch::sort(flat, std::optional<bool>(true), 0, false));
  torch::Tensor token_of = torch::arange(t, flat.options())
                               .repeat_interleave(k)
                               .index_select(0, order);
  torch::Tensor expert_of = flat.index_select(0, order);
  torch::Tensor rows = pre_norm(x).index_select(0, token_of);

  const int64_t p = ep_->size(), local = e_all / p;
  torch::Tensor per_rank = counts.view({p, local}).sum(1);
  std::vector<int64_t> send(per_rank.data_ptr<int64_t>(),
                            per_rank.data_ptr<int64_t>() + p);

  std::vector<int64_t> recv;
  torch::Tensor got = AllToAllRows(*ep_, rows, send, &recv);
  torch::Tensor got_expert = expert_of;
  if (p > 1) {
    std::vector<torch::Tensor> ids;
    for (auto& s : expert_of.split_with_sizes(send, 0))
      ids.push_back(s.contiguous());
    std::vector<torch::Tensor> r = ep_->AllToAll(ids);
    got_expert = r.empty() ? expert_of.new_empty({0}) : torch::cat(r, 0);
  }
  // Regroup what arrived (per source rank, each sorted by expert) by expert.
  torch::Tensor local_id = got_expert - experts->first;
  torch::Tensor regroup =
      std::get<1>(torch::sort(local_id, std::optional<bool>(true), 0, false));
  torch::Tensor local_counts = torch::bincount(local_id.cpu(), {}, local);
  std::vector<int64_t> lc(local_counts.data_ptr<int64_t>(),
                          local_counts.data_ptr<int64_t>() + local);
  torch::Tensor y = experts(got.index_select(0, regroup), lc);
  y = y.index_select(0, std::get<1>(torch::sort(
                            regroup, std::optional<bool>(true), 0, false)));

  std::vector<int64_t> back_counts;
  torch::Tensor back = AllToAllRows(*ep_, y, recv, &back_counts);
  torch::Tensor w = routing.weights.reshape({-1}).index_select(0, order);
  torch::Tensor contrib = (back * w.unsqueeze(1)).to(x.scalar_type());
  torch::Tensor out = torch::zeros_like(x).index_add(0, token_of, contrib);
  return post_norm(out);
}

}  // namespace gemma
