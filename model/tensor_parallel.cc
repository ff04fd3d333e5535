#include "model/tensor_parallel.h"

#include <torch/torch.h>

#include <algorithm>
#include <limits>

#include "model/fused_ops.h"

namespace gemma {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The Comm of a forward call, kept for backward. The caller guarantees it
// outlives the backward pass (see the header).
void SaveComm(AutogradContext* ctx, Comm* comm) {
  ctx->saved_data["comm"] =
      static_cast<int64_t>(reinterpret_cast<intptr_t>(comm));
}
Comm& SavedComm(AutogradContext* ctx) {
  return *reinterpret_cast<Comm*>(
      static_cast<intptr_t>(ctx->saved_data["comm"].toInt()));
}

// This rank's slice of the last dim (which must split evenly).
torch::Tensor OwnSlice(const torch::Tensor& x, Comm& comm) {
  const int64_t d = x.size(-1);
  TORCH_CHECK(d % comm.size() == 0, "tensor parallel: last dim ", d,
              " does not split into ", comm.size(), " parts");
  const int64_t part = d / comm.size();
  return x.narrow(-1, comm.rank() * part, part).contiguous();
}

class CopyToRegion : public torch::autograd::Function<CopyToRegion> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               Comm* comm) {
    SaveComm(ctx, comm);
    return x.view_as(x);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list g) {
    torch::Tensor out = g[0].contiguous().clone();
    SavedComm(ctx).AllReduceSum(out);
    return {out, torch::Tensor()};
  }
};

class ReduceFromRegion : public torch::autograd::Function<ReduceFromRegion> {
 public:
  static torch::Tensor forward(AutogradContext*, const torch::Tensor& x,
                               Comm* comm) {
    torch::Tensor out = x.contiguous().clone();
    comm->AllReduceSum(out);
    return out;
  }
  static tensor_list backward(AutogradContext*, tensor_list g) {
    return {g[0], torch::Tensor()};
  }
};

class GatherFromRegion : public torch::autograd::Function<GatherFromRegion> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               Comm* comm) {
    SaveComm(ctx, comm);
    return comm->AllGather(x.contiguous(), x.dim() - 1);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list g) {
    return {OwnSlice(g[0], SavedComm(ctx)), torch::Tensor()};
  }
};

class ScatterToRegion : public torch::autograd::Function<ScatterToRegion> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               Comm* comm) {
    SaveComm(ctx, comm);
    return OwnSlice(x, *comm);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list g) {
    Comm& comm = SavedComm(ctx);
    return {comm.AllGather(g[0].contiguous(), g[0].dim() - 1), torch::Tensor()};
  }
};

// Every rank's chunk padded to ceil(N / tp) rows, gathered along dim 0, and
// the padding dropped: [N, ...].
torch::Tensor GatherRowChunks(const torch::Tensor& x, int64_t n, Comm& comm) {
  const int tp = comm.size();
  const int64_t per = (n + tp - 1) / tp;
  torch::Tensor padded = x;
  if (x.size(0) < per) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape[0] = per - x.size(0);
    padded = torch::cat({x, torch::zeros(shape, x.options())}, 0);
  }
  torch::Tensor all = comm.AllGather(padded.contiguous(), 0);
  if (per * tp == n) return all;
  std::vector<torch::Tensor> parts;
  for (int r = 0; r < tp; ++r) {
    auto [begin, count] = TpRowChunk(n, tp, r);
    (void)begin;
    if (count > 0) parts.push_back(all.narrow(0, r * per, count));
  }
  return torch::cat(parts, 0);
}

torch::Tensor OwnRowChunk(const torch::Tensor& x, Comm& comm) {
  auto [begin, count] = TpRowChunk(x.size(0), comm.size(), comm.rank());
  return x.narrow(0, begin, count).contiguous();
}

class ScatterRows : public torch::autograd::Function<ScatterRows> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               Comm* comm) {
    SaveComm(ctx, comm);
    ctx->saved_data["n"] = x.size(0);
    return OwnRowChunk(x, *comm);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list g) {
    return {GatherRowChunks(g[0], ctx->saved_data["n"].toInt(), SavedComm(ctx)),
            torch::Tensor()};
  }
};

class GatherRows : public torch::autograd::Function<GatherRows> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               int64_t n, Comm* comm) {
    SaveComm(ctx, comm);
    return GatherRowChunks(x, n, *comm);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list g) {
    return {OwnRowChunk(g[0], SavedComm(ctx)), torch::Tensor(),
            torch::Tensor()};
  }
};

// x [B, L, ...] -> [L, B, ...] contiguous (collectives split dim 0) and back.
torch::Tensor SeqFirst(const torch::Tensor& x) {
  return x.transpose(0, 1).contiguous();
}

torch::Tensor GatherSeq(const torch::Tensor& x, Comm& comm) {
  return comm.AllGather(x.contiguous(), 1);
}

torch::Tensor ReduceScatterSeq(const torch::Tensor& x, Comm& comm) {
  TORCH_CHECK(x.dim() >= 2 && x.size(1) % comm.size() == 0,
              "sequence parallel: length ", x.dim() >= 2 ? x.size(1) : -1,
              " does not split into ", comm.size(), " parts");
  return comm.ReduceScatterSum(SeqFirst(x)).transpose(0, 1).contiguous();
}

torch::Tensor OwnSeqSlice(const torch::Tensor& x, Comm& comm) {
  TORCH_CHECK(x.dim() >= 2 && x.size(1) % comm.size() == 0,
              "sequence parallel: length ", x.dim() >= 2 ? x.size(1) : -1,
              " does not split into ", comm.size(), " parts");
  const int64_t part = x.size(1) / comm.size();
  return x.narrow(1, comm.rank() * part, part).contiguous();
}

class ScatterToSeq : public torch::autograd::Function<ScatterToSeq> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               Comm* comm) {
    SaveComm(ctx, comm);
    return OwnSeqSlice(x, *comm);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list g) {
    return {GatherSeq(g[0], SavedComm(ctx)), torch::Tensor()};
  }
};

class GatherFromSeq : public torch::autograd::Function<GatherFromSeq> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               Comm* comm, bool reduce_grad) {
    SaveComm(ctx, comm);
    ctx->saved_data["reduce"] = reduce_grad;
    return GatherSeq(x, *comm);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list g) {
    Comm& comm = SavedComm(ctx);
    torch::Tensor out = ctx->saved_data["reduce"].toBool()
                            ? ReduceScatterSeq(g[0], comm)
                            : OwnSeqSlice(g[0], comm);
    return {out, torch::Tensor(), torch::Tensor()};
  }
};

class ReduceScatterToSeq
    : public torch::autograd::Function<ReduceScatterToSeq> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               Comm* comm) {
    SaveComm(ctx, comm);
    return ReduceScatterSeq(x, *comm);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list g) {
    return {GatherSeq(g[0], SavedComm(ctx)), torch::Tensor()};
  }
};

// Vocab-parallel fused head + cross-entropy. Like model/loss.cc's
// FusedLinearCrossEntropy, forward also computes the gradients for a unit
// upstream gradient; backward scales them.
class VocabParallelCE : public torch::autograd::Function<VocabParallelCE> {
 public:
  static tensor_list forward(AutogradContext* ctx, const torch::Tensor& h,
                             const torch::Tensor& w,
                             const torch::Tensor& targets, VocabShard shard,
                             int64_t vocab, double softcap, int64_t chunk,
                             int64_t ignore_index, Comm* comm) {
    const int64_t n = h.size(0);
    const bool need_h = h.requires_grad();
    const bool need_w = w.requires_grad();
    const auto f32 = h.options().dtype(torch::kFloat);
    torch::Tensor loss = torch::zeros({}, f32);
    torch::Tensor correct = torch::zeros({}, targets.options());
    torch::Tensor grad_h =
        need_h ? torch::zeros(h.sizes(), f32) : torch::Tensor();
    torch::Tensor grad_w =
        need_w ? torch::zeros(w.sizes(), f32) : torch::Tensor();
    // Padding rows of the last shard never win the softmax.
    torch::Tensor pad_mask;
    if (shard.valid < shard.rows) {
      pad_mask = torch::arange(shard.rows, targets.options()).ge(shard.valid);
    }
    const float neg_inf = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < n; s += chunk) {
      const int64_t len = std::min(chunk, n - s);
      torch::Tensor hc = h.narrow(0, s, len);
      torch::Tensor tc = targets.narrow(0, s, len);
      torch::Tensor valid = tc.ne(ignore_index);
      torch::Tensor z =
          torch::matmul(hc, w.t()).to(torch::kFloat);  // [len, rows]
      torch::Tensor t;
      if (softcap > 0) {
        t = torch::tanh(z / softcap);
        z = t * softcap;
      }
      if (pad_mask.defined()) z = z.masked_fill(pad_mask, neg_inf);
      // Global row max, then the global sum of exponentials.
      auto [local_max, local_arg] = z.max(1);
      torch::Tensor m = local_max.clone();
      comm->AllReduceMax(m);
      torch::Tensor e = torch::exp(z - m.unsqueeze(1));
      torch::Tensor sum = e.sum(1);
      comm->AllReduceSum(sum);
      // The target logit, from the rank owning it.
      torch::Tensor local_t = tc - shard.start;
      torch::Tensor owned = valid & local_t.ge(0) & local_t.lt(shard.valid);
      torch::Tensor safe =
          torch::where(owned, local_t, torch::zeros_like(local_t));
      torch::Tensor zt =
          z.gather(1, safe.unsqueeze(1)).squeeze(1) * owned.to(torch::kFloat);
      comm->AllReduceSum(zt);
      torch::Tensor row_loss = torch::log(sum) + m - zt;
      loss += (row_loss * valid.to(torch::kFloat)).sum();
      // Global argmax, lowest index among equal maxima (as argmax does).
      const double big =
          static_cast<double>(std::numeric_limits<int64_t>::max());
      torch::Tensor idx = torch::where(
          local_max.eq(m), (local_arg + shard.start).to(torch::kDouble),
          torch::full_like(m, big, torch::kDouble));
      torch::Tensor neg = -idx;
      comm->AllReduceMax(neg);
      correct += ((-neg).to(torch::kLong).eq(tc) & valid).sum();
      if (!need_h && !need_w) continue;
      // d(-log p_y)/dz = softmax - onehot(y), zero on ignored rows.
      torch::Tensor g = e / sum.unsqueeze(1);
      g.scatter_add_(1, safe.unsqueeze(1),
                     -owned.to(torch::kFloat).unsqueeze(1));
      g.mul_(valid.to(torch::kFloat).unsqueeze(1));
      if (softcap > 0) g.mul_(1 - t * t);
      if (pad_mask.defined()) g.masked_fill_(pad_mask, 0);
      if (need_h) {
        grad_h.narrow(0, s, len).copy_(
            torch::matmul(g.to(h.scalar_type()), w).to(torch::kFloat));
      }
      if (need_w) grad_w.add_(torch::matmul(g.t(), hc.to(torch::kFloat)));
    }
    // h is replicated: its gradient is the sum of every shard's part.
    if (need_h) comm->AllReduceSum(grad_h);
    ctx->save_for_backward(
        {need_h ? grad_h.to(h.scalar_type()) : torch::Tensor(),
         need_w ? grad_w.to(w.scalar_type()) : torch::Tensor()});
    ctx->mark_non_differentiable({correct});
    return {loss, correct};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor go = grads[0];
    torch::Tensor gh, gw;
    if (saved[0].defined()) gh = saved[0] * go.to(saved[0].scalar_type());
    if (saved[1].defined()) gw = saved[1] * go.to(saved[1].scalar_type());
    return {gh,
            gw,
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

at::Tensor CopyToTpRegion(const at::Tensor& x, Comm& comm) {
  if (comm.size() == 1) return x;
  return CopyToRegion::apply(x, &comm);
}
at::Tensor ReduceFromTpRegion(const at::Tensor& x, Comm& comm) {
  if (comm.size() == 1) return x;
  return ReduceFromRegion::apply(x, &comm);
}
at::Tensor GatherFromTpRegion(const at::Tensor& x, Comm& comm) {
  if (comm.size() == 1) return x;
  return GatherFromRegion::apply(x, &comm);
}
at::Tensor ScatterToTpRegion(const at::Tensor& x, Comm& comm) {
  if (comm.size() == 1) return x;
  return ScatterToRegion::apply(x, &comm);
}

std::pair<int64_t, int64_t> TpRowChunk(int64_t n, int tp, int rank) {
  const int64_t per = (n + tp - 1) / tp;
  const int64_t begin = std::min<int64_t>(n, rank * per);
  return {begin, std::min<int64_t>(per, n - begin)};
}

at::Tensor ScatterRowsToTpRegion(const at::Tensor& x, Comm& comm) {
  if (comm.size() == 1) return x;
  return ScatterRows::apply(x, &comm);
}

at::Tensor GatherRowsFromTpRegion(const at::Tensor& x, int64_t n, Comm& comm) {
  if (comm.size() == 1) return x;
  return GatherRows::apply(x, n, &comm);
}

at::Tensor VocabParallelLogits(const at::Tensor& hidden,
                               const at::Tensor& weight_shard,
                               int64_t vocab_size, const TpOptions& tp) {
  // Decode rows (inference) go through the GEMV kernel (model/fused_ops.h):
  // 93.5% of the HBM bandwidth on the 4B head against cuBLAS's 85.5%.
  if (!tp.split()) return LinearWithGemv(hidden, weight_shard);
  at::Tensor logits =
      LinearWithGemv(CopyToTpRegion(hidden, *tp.comm), weight_shard);
  return GatherFromTpRegion(logits, *tp.comm).narrow(-1, 0, vocab_size);
}

at::Tensor ScatterToSequenceRegion(const at::Tensor& x, Comm& comm) {
  if (comm.size() == 1) return x;
  return ScatterToSeq::apply(x, &comm);
}
at::Tensor GatherFromSequenceRegion(const at::Tensor& x, Comm& comm,
                                    bool reduce_grad) {
  if (comm.size() == 1) return x;
  return GatherFromSeq::apply(x, &comm, reduce_grad);
}
at::Tensor ReduceScatterToSequenceRegion(const at::Tensor& x, Comm& comm) {
  if (comm.size() == 1) return x;
  return ReduceScatterToSeq::apply(x, &comm);
}

VocabShard VocabShardOf(int64_t vocab_size, int tp, int rank) {
  TORCH_CHECK(vocab_size > 0 && tp > 0 && rank >= 0 && rank < tp,
              "VocabShardOf: vocab ", vocab_size, ", tp ", tp, ", rank ", rank);
  VocabShard s;
  s.rows = (vocab_size + tp - 1) / tp;
  s.start = rank * s.rows;
  s.valid = std::clamp<int64_t>(vocab_size - s.start, 0, s.rows);
  return s;
}

at::Tensor VocabParallelEmbedding(const at::Tensor& ids,
                                  const at::Tensor& weight_shard,
                                  const VocabShard& shard, Comm& comm,
                                  int64_t padding_idx) {
  TORCH_CHECK(weight_shard.dim() == 2 && weight_shard.size(0) == shard.rows,
              "VocabParallelEmbedding: weight shard ", weight_shard.sizes(),
              " for a shard of ", shard.rows, " rows");
  torch::Tensor local = ids - shard.start;
  torch::Tensor owned = local.ge(0) & local.lt(shard.valid);
  // Ids of other shards look up a row whose gradient is dropped: the local
  // padding row when this shard owns it, else row 0 masked out below (its
  // gradient is then multiplied by 0).
  const int64_t local_pad =
      padding_idx >= shard.start && padding_idx < shard.start + shard.valid
          ? padding_idx - shard.start
          : -1;
  torch::Tensor safe = torch::where(owned, local, torch::zeros_like(local));
  torch::Tensor out = torch::embedding(weight_shard, safe, local_pad);
  out = out * owned.unsqueeze(-1).to(out.scalar_type());
  return ReduceFromTpRegion(out, comm);
}

LmLoss VocabParallelTokenLoss(const at::Tensor& h,
                              const at::Tensor& weight_shard,
                              const VocabShard& shard, int64_t vocab_size,
                              const at::Tensor& targets, Comm& comm,
                              const LmLossOptions& options) {
  TORCH_CHECK(h.dim() == 2 && weight_shard.dim() == 2 &&
                  h.size(1) == weight_shard.size(1) &&
                  weight_shard.size(0) == shard.rows,
              "VocabParallelTokenLoss: hidden ", h.sizes(),
              " does not match head shard ", weight_shard.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == h.size(0),
              "VocabParallelTokenLoss: targets ", targets.sizes(),
              " for hidden ", h.sizes());
  torch::Tensor tg = targets.to(torch::kLong);
  auto out = VocabParallelCE::apply(
      h, weight_shard, tg, shard, vocab_size, options.softcap,
      std::max<int64_t>(1, options.chunk_tokens), options.ignore_index, &comm);
  LmLoss r;
  r.loss_sum = out[0];
  r.correct = out[1];
  r.tokens = tg.ne(options.ignore_index).sum();
  return r;
}

LmLoss VocabParallelCausalLmLoss(const at::Tensor& hidden,
                                 const at::Tensor& weight_shard,
                                 const VocabShard& shard, int64_t vocab_size,
                                 const at::Tensor& labels, Comm& comm,
                                 const LmLossOptions& options) {
  TORCH_CHECK(hidden.dim() == 3 && labels.dim() == 2 &&
                  hidden.size(0) == labels.size(0) &&
                  hidden.size(1) == labels.size(1),
              "VocabParallelCausalLmLoss: hidden ", hidden.sizes(),
              " and labels ", labels.sizes(), " differ in batch or length");
  const int64_t b = hidden.size(0), t = hidden.size(1), hs = hidden.size(2);
  if (t < 2) {
    LmLoss r;
    r.loss_sum = (hidden.sum() * 0).to(torch::kFloat);
    r.tokens = torch::zeros({}, labels.options().dtype(torch::kLong));
    r.correct = r.tokens.clone();
    return r;
  }
  torch::Tensor h = hidden.narrow(1, 0, t - 1).reshape({b * (t - 1), hs});
  torch::Tensor y = labels.narrow(1, 1, t - 1).reshape({b * (t - 1)});
  torch::Tensor keep = y.ne(options.ignore_index).nonzero().squeeze(1);
  return VocabParallelTokenLoss(h.index_select(0, keep), weight_shard, shard,
                                vocab_size, y.index_select(0, keep), comm,
                                options);
}

}  // namespace gemma
