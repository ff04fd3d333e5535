#include "model/loss.h"

#include <torch/torch.h>

#include <algorithm>
#include <vector>

namespace gemma {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// One chunk's contribution: loss sum, correct count, and (when asked) the
// gradient of -sum log p(y) with respect to the chunk's logits, z [n, V].
struct ChunkResult {
  torch::Tensor loss, correct;
  torch::Tensor grad_z;      // [n, V]; rows of ignored targets are NOT zeroed
  bool rows_masked = false;  // whether grad_z's ignored rows are already 0
};

// Exact fp32 math (the reference; CPU parity runs here): logits upcast,
// optional soft-capping, log-softmax, softmax - onehot in fp32.
ChunkResult Fp32Chunk(const torch::Tensor& z_in, const torch::Tensor& safe,
                      const torch::Tensor& tc, const torch::Tensor& valid,
                      double softcap, bool need_grad) {
  ChunkResult r;
  torch::Tensor z = z_in.to(torch::kFloat);
  torch::Tensor t;  // tanh(z / cap) when capped
  if (softcap > 0) {
    t = torch::tanh(z / softcap);
    z = t * softcap;
  }
  torch::Tensor logp = torch::log_softmax(z, -1);
  torch::Tensor picked = logp.gather(1, safe.unsqueeze(1)).squeeze(1);
  r.loss = -(picked * valid.to(torch::kFloat)).sum();
  r.correct = (z.argmax(1).eq(tc) & valid).sum();
  if (!need_grad) return r;
  // d(-log p_y)/dz = softmax - onehot(y), zero on ignored rows.
  torch::Tensor g = logp.exp_();
  g.scatter_add_(1, safe.unsqueeze(1),
                 -torch::ones({z.size(0), 1}, g.options()));
  g.mul_(valid.to(torch::kFloat).unsqueeze(1));
  if (softcap > 0) g.mul_(1 - t * t);
  r.grad_z = g;
  r.rows_masked = true;
  return r;
}

// bf16/fp16 logits without soft-capping (Gemma 3): the [n, V] logits are
// never upcast as a whole. log-softmax reads them once into fp32 for the
// loss, softmax writes the gradient straight in the logits' dtype (fp32
// inside the kernel), and argmax reads the logits as they are (the upcast is
// exact, so the index is the same). The gradient is what autograd would hand
// the head's matmul in transformers: softmax - onehot, rounded to bf16 once.
ChunkResult ReducedPrecisionChunk(const torch::Tensor& z,
                                  const torch::Tensor& safe,
                                  const torch::Tensor& tc,
                                  const torch::Tensor& valid, bool need_grad) {
  ChunkResult r;
  torch::Tensor logp = torch::log_softmax(z, -1, torch::kFloat);
  torch::Tensor picked = logp.gather(1, safe.unsqueeze(1)).squeeze(1);
  r.loss = -(picked * valid.to(torch::kFloat)).sum();
  r.correct = (z.argmax(1).eq(tc) & valid).sum();
  if (!need_grad) return r;
  logp = torch::Tensor();  // free the fp32 copy before the gradient
  torch::Tensor g = torch::softmax(z, -1);
  g.scatter_add_(1, safe.unsqueeze(1),
                 -torch::ones({z.size(0), 1}, g.options()));
  r.grad_z = g;
  return r;
}

// Forward computes loss, and the gradients for a unit upstream gradient;
// backward scales them by the upstream gradient.
class FusedLinearCrossEntropy
    : public torch::autograd::Function<FusedLinearCrossEntropy> {
 public:
  static tensor_list forward(AutogradContext* ctx, const torch::Tensor& h,
                             const torch::Tensor& weight,
                             const torch::Tensor& targets, double softcap,
                             int64_t chunk, int64_t ignore_index) {
    const int64_t n = h.size(0);
    const bool need_h = h.requires_grad();
    const bool need_w = weight.requires_grad();
    const bool reduced = softcap <= 0 && h.scalar_type() != torch::kFloat &&
                         h.scalar_type() != torch::kDouble;
    const bool one_chunk = n <= chunk;
    torch::Tensor loss = torch::zeros({}, h.options().dtype(torch::kFloat));
    torch::Tensor correct = torch::zeros({}, targets.options());
    torch::Tensor grad_h = need_h ? torch::empty_like(h) : torch::Tensor();
    // The head's gradient: one chunk writes it in the weight's dtype
    // directly; several accumulate in fp32.
    torch::Tensor grad_w;
    if (need_w && !one_chunk) {
      grad_w =
          torch::zeros(weight.sizes(), weight.options().dtype(torch::kFloat));
    }
    for (int64_t s = 0; s < n; s += chunk) {
      const int64_t len = std::min(chunk, n - s);
      torch::Tensor hc = h.narrow(0, s, len);
      torch::Tensor tc = targets.narrow(0, s, len);
      torch::Tensor valid = tc.ne(ignore_index);
      torch::Tensor safe = torch::where(valid, tc, torch::zeros_like(tc));
      torch::Tensor z = torch::matmul(hc, weight.t());
      const bool need_grad = need_h || need_w;
      ChunkResult r = reduced
                          ? ReducedPrecisionChunk(z, safe, tc, valid, need_grad)
                          : Fp32Chunk(z, safe, tc, valid, softcap, need_grad);
      z = torch::Tensor();
      loss += r.loss;
      correct += r.correct;
      if (!need_grad) continue;
      // Rows of ignored targets get no gradient: zero them in the small
      // [len, H] operands instead of the [len, V] gradient (multiplying by
      // 0 or 1 gives the same terms).
      torch::Tensor row_mask = r.rows_masked
                                   ? torch::Tensor()
                                   : valid.to(h.scalar_type()).unsqueeze(1);
      torch::Tensor gz = r.grad_z.to(h.scalar_type());
      if (need_h) {
        torch::Tensor gh = torch::matmul(gz, weight);
        if (row_mask.defined()) gh.mul_(row_mask);
        grad_h.narrow(0, s, len).copy_(gh);
      }
      if (need_w) {
        torch::Tensor hm = row_mask.defined() ? hc * row_mask : hc;
        if (reduced) {
          // bf16 operands, fp32 accumulation inside the GEMM.
          torch::Tensor gw = torch::matmul(gz.t(), hm);
          if (one_chunk) {
            grad_w = gw;
          } else {
            grad_w.add_(gw);
          }
        } else if (one_chunk) {
          grad_w = torch::matmul(r.grad_z.t(), hm.to(torch::kFloat));
        } else {
          grad_w.add_(torch::matmul(r.grad_z.t(), hm.to(torch::kFloat)));
        }
      }
    }
    ctx->save_for_backward(
        {grad_h, need_w ? grad_w.to(weight.scalar_type()) : torch::Tensor()});
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
            torch::Tensor()};
  }
};

}  // namespace

LmLoss TokenLoss(const at::Tensor& h, const at::Tensor& weight,
                 const at::Tensor& targets, const LmLossOptions& options) {
  TORCH_CHECK(h.dim() == 2 && weight.dim() == 2 && h.size(1) == weight.size(1),
              "TokenLoss: hidden ", h.sizes(), " does not match head weight ",
              weight.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == h.size(0),
              "TokenLoss: targets ", targets.sizes(), " for hidden ",
              h.sizes());
  torch::Tensor tg = targets.to(torch::kLong);
  auto out = FusedLinearCrossEntropy::apply(
      h, weight, tg, options.softcap,
      std::max<int64_t>(1, options.chunk_tokens), options.ignore_index);
  LmLoss r;
  r.loss_sum = out[0];
  r.correct = out[1];
  r.tokens = tg.ne(options.ignore_index).sum();
  return r;
}

LmLoss CausalLmLoss(const at::Tensor& hidden, const at::Tensor& weight,
                    const at::Tensor& labels, const LmLossOptions& options) {
  TORCH_CHECK(hidden.dim() == 3 && labels.dim() == 2 &&
                  hidden.size(0) == labels.size(0) &&
                  hidden.size(1) == labels.size(1),
              "CausalLmLoss: hidden ", hidden.sizes(), " and labels ",
              labels.sizes(), " differ in batch or length");
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
  // On the CPU only rows with a target enter the head (prompt tokens can be
  // most rows). On a GPU selecting them would need a host sync (nonzero), so
  // every row goes through and ignored ones contribute nothing.
  if (hidden.is_cuda()) return TokenLoss(h, weight, y, options);
  torch::Tensor keep = y.ne(options.ignore_index).nonzero().squeeze(1);
  return TokenLoss(h.index_select(0, keep), weight, y.index_select(0, keep),
                   options);
}

}  // namespace gemma
