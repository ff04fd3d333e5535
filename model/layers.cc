#include "model/layers.h"

#include <torch/torch.h>

#include <atomic>
#include <cstdlib>
#include <limits>
#include <string>

#include "model/fused_ops.h"
#include "model/kv_cache.h"

namespace gemma {

// ---- RMSNorm
// -----------------------------------------------------------------
RMSNormImpl::RMSNormImpl(const RMSNormOptions& opts) : options(opts) {
  weight = register_parameter("weight", torch::zeros({options.dim()}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  return GemmaRmsNorm(x, weight, options.eps(), x.is_cuda());
}

torch::Tensor GemmaRmsNorm(const torch::Tensor& x, const torch::Tensor& weight,
                           double eps, bool fused) {
  if (fused && FusedApplies(x)) {
    // One kernel each way, bf16 in and out (fp32 inside): no fp32 copies.
    return FusedRmsNorm(x, weight, eps, /*offset=*/1.0);
  }
  torch::Tensor xf = x.to(torch::kFloat);
  torch::Tensor scale = 1.0 + weight.to(torch::kFloat);
  if (fused) {
    // at::rms_norm computes xf * rsqrt(mean(xf^2) + eps) * scale in one
    // kernel on CUDA (and its backward in one), the same fp32 math.
    return at::rms_norm(xf, {xf.size(-1)}, scale, eps).to(x.scalar_type());
  }
  torch::Tensor out =
      xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  out = out * scale;
  return out.to(x.scalar_type());
}

// ---- Rotary
// ------------------------------------------------------------------
torch::Tensor RopeInverseFrequencies(int64_t head_dim,
                                     const RopeParams& params) {
  torch::Tensor exponent = torch::arange(0, head_dim, 2, torch::kFloat) /
                           static_cast<double>(head_dim);
  torch::Tensor inv_freq = torch::pow(params.theta, exponent).reciprocal();
  if (params.rope_type == "linear") inv_freq = inv_freq / params.factor;
  return inv_freq;
}

std::pair<torch::Tensor, torch::Tensor> RopeCosSin(
    const torch::Tensor& inv_freq, const torch::Tensor& position_ids,
    c10::ScalarType dtype) {
  const int64_t b = position_ids.size(0);
  torch::Tensor inv = inv_freq.to(position_ids.device(), torch::kFloat)
                          .view({1, -1, 1})
                          .expand({b, -1, 1});
  torch::Tensor pos = position_ids.unsqueeze(1).to(torch::kFloat);  // [B, 1, L]
  torch::Tensor freqs =
      torch::matmul(inv, pos).transpose(1, 2);  // [B, L, hd/2]
  torch::Tensor emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

namespace {
torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  torch::Tensor x1 = x.narrow(-1, 0, half);
  torch::Tensor x2 = x.narrow(-1, half, x.size(-1) - half);
  return torch::cat({-x2, x1}, -1);
}
}  // namespace

torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin) {
  torch::Tensor c = cos.unsqueeze(1);
  torch::Tensor s = sin.unsqueeze(1);
  return x * c + RotateHalf(x) * s;
}

// ---- Masks
// -------------------------------------------------------------------
torch::Tensor BlockIdsFromTokenTypes(const torch::Tensor& token_type_ids) {
  torch::Tensor is_image = token_type_ids.eq(1);
  torch::Tensor prev =
      torch::constant_pad_nd(is_image.to(torch::kInt), {1, 0}, 0)
          .narrow(1, 0, is_image.size(1))
          .to(torch::kBool);
  torch::Tensor start = is_image.logical_and(prev.logical_not());
  torch::Tensor group = start.to(torch::kLong).cumsum(1) - 1;
  return torch::where(is_image, group, torch::full_like(group, -1));
}

torch::Tensor SegmentIdsFromPositions(const torch::Tensor& position_ids,
                                      int64_t batch) {
  torch::Tensor pos = position_ids.to(torch::kLong).expand({batch, -1});
  torch::Tensor first = pos.narrow(1, 0, 1) - 1;
  torch::Tensor diff = torch::diff(pos, 1, -1, first);
  torch::Tensor seg = diff.ne(1).to(torch::kLong).cumsum(-1);
  if (seg.select(1, seg.size(1) - 1).eq(0).all().item<bool>()) return {};
  return seg;
}

namespace {
// 0 where `allowed`, the dtype's lowest finite value elsewhere.
torch::Tensor AdditiveMask(const torch::Tensor& allowed, c10::ScalarType dtype,
                           c10::Device device) {
  const double lowest =
      dtype == torch::kFloat    ? std::numeric_limits<float>::lowest()
      : dtype == torch::kDouble ? std::numeric_limits<double>::lowest()
      : dtype == torch::kBFloat16
          ? static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest())
          : static_cast<double>(std::numeric_limits<c10::Half>::lowest());
  auto opts = torch::TensorOptions().dtype(dtype).device(device);
  torch::Tensor zero = torch::zeros({}, opts);
  torch::Tensor low = torch::full({}, lowest, opts);
  return torch::where(allowed, zero, low);
}

// Gathers values[b, idx] for idx in `index` (absolute), -1 beyond the end.
torch::Tensor GatherPadded(const torch::Tensor& values,
                           const torch::Tensor& index, int64_t fill) {
  const int64_t need = index.numel() == 0 ? 0 : index.max().item<int64_t>() + 1;
  torch::Tensor v = values.to(index.device(), torch::kLong);
  if (v.size(1) < need)
    v = torch::constant_pad_nd(v, {0, need - v.size(1)}, fill);
  return v.index_select(1, index);
}
}  // namespace

torch::Tensor BuildAttentionBias(const MaskSpec& spec, c10::ScalarType dtype) {
  auto long_opts =
      torch::TensorOptions().dtype(torch::kLong).device(spec.device);
  torch::Tensor q_abs =
      torch::arange(spec.q_len, long_opts) + spec.q_offset;  // [L]
  torch::Tensor kv_abs =
      torch::arange(spec.kv_len, long_opts) + spec.kv_offset;  // [T]
  torch::Tensor qi = q_abs.view({1, -1, 1});
  torch::Tensor kj = kv_abs.view({1, 1, -1});
  torch::Tensor allowed =
      kj.le(qi).expand({spec.batch, spec.q_len, spec.kv_len});

  torch::Tensor same_segment, same_block;
  if (spec.segment_ids.defined()) {
    torch::Tensor seg_q =
        GatherPadded(spec.segment_ids, q_abs, -1).unsqueeze(2);
    torch::Tensor seg_k =
        GatherPadded(spec.segment_ids, kv_abs, -1).unsqueeze(1);
    same_segment = seg_q.eq(seg_k);
  }
  if (spec.block_ids.defined()) {
    torch::Tensor bq = GatherPadded(spec.block_ids, q_abs, -1).unsqueeze(2);
    torch::Tensor bk = GatherPadded(spec.block_ids, kv_abs, -1).unsqueeze(1);
    same_block = bq.eq(bk).logical_and(bq.ge(0));
  }
  if (spec.sliding_window > 0) {
    if (same_block.defined()) allowed = allowed.logical_or(same_block);
    allowed = allowed.logical_and(kj.gt(qi - spec.sliding_window));
    if (same_segment.defined()) allowed = allowed.logical_and(same_segment);
  } else {
    if (same_segment.defined()) allowed = allowed.logical_and(same_segment);
    if (same_block.defined()) allowed = allowed.logical_or(same_block);
  }
  if (spec.padding.defined()) {
    torch::Tensor pad =
        GatherPadded(spec.padding.ne(0), kv_abs, 0).ne(0).unsqueeze(1);
    allowed = allowed.logical_and(pad);
  }
  return AdditiveMask(allowed, dtype, spec.device).unsqueeze(1);
}

torch::Tensor StaticStepBias(const torch::Tensor& index,
                             const torch::Tensor& padding, int64_t window,
                             c10::ScalarType dtype) {
  TORCH_CHECK(padding.dim() == 2, "StaticStepBias: padding must be [B, C]");
  const int64_t b = padding.size(0), c = padding.size(1);
  auto long_opts =
      torch::TensorOptions().dtype(torch::kLong).device(padding.device());
  torch::Tensor j = torch::arange(c, long_opts).unsqueeze(0);      // [1, C]
  torch::Tensor allowed = j.le(index).logical_and(padding.ne(0));  // [B, C]
  if (window > 0) allowed = allowed.logical_and(j.gt(index - window));
  return AdditiveMask(allowed, dtype, padding.device()).view({b, 1, 1, c});
}

// ---- Causal plan
// ------------------------------------------------------------
CausalPlan BuildCausalPlan(const torch::Tensor& block_ids, int64_t window) {
  CausalPlan plan;
  plan.window = window;
  if (!block_ids.defined()) return plan;
  torch::Tensor any = block_ids.ge(0).any(0).to(torch::kCPU).contiguous();
  const bool* in_block = any.data_ptr<bool>();
  const int64_t l = any.numel();
  for (int64_t i = 0; i < l;) {
    if (!in_block[i]) {
      ++i;
      continue;
    }
    int64_t e = i;
    while (e < l && in_block[e]) ++e;
    plan.dense_rows.emplace_back(i, e);
    i = e;
  }
  return plan;
}

bool CausalPlanApplies(const torch::Tensor& x, int64_t head_dim) {
  return x.is_cuda() && UseSdpa(x) &&
         (x.scalar_type() == torch::kBFloat16 ||
          x.scalar_type() == torch::kHalf) &&
         head_dim % 8 == 0 && head_dim <= 256;
}

// ---- Projection
// --------------------------------------------------------------
ProjectionImpl::ProjectionImpl(int64_t in, int64_t out, bool with_bias)
    : in_features(in), out_features(out) {
  // torch::nn::Linear's default initialisation (Kaiming-uniform, a = sqrt 5).
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = register_parameter("weight",
                              torch::empty({out, in}).uniform_(-bound, bound));
  if (with_bias) {
    bias =
        register_parameter("bias", torch::empty({out}).uniform_(-bound, bound));
  }
}

torch::Tensor ProjectionImpl::forward(const torch::Tensor& x) {
  if (adapter_) return adapter_->Forward(x, weight, bias);
  // Decode's 1-4 rows in inference: the GEMV kernel, chained after the
  // kernel before it (model/fused_ops.h says when and why).
  if (GemvServesProjection(x, weight, bias)) {
    return FusedLinear(x, weight, bias);
  }
  return torch::nn::functional::linear(x, weight, bias);
}

void ProjectionImpl::SetAdapter(const std::string& name,
                                std::shared_ptr<ProjectionAdapter> adapter) {
  if (adapter_) unregister_module(adapter_name_);
  adapter_ = std::move(adapter);
  adapter_name_ = adapter_ ? name : "";
  if (adapter_) register_module(name, adapter_);
}

// ---- Attention kernels
// -------------------------------------------------------
namespace {
AttentionKernel KernelFromEnv() {
  const char* v = std::getenv("GEMMA_ATTENTION");
  if (v == nullptr) return AttentionKernel::kAuto;
  const std::string s(v);
  if (s == "eager") return AttentionKernel::kEager;
  if (s == "sdpa") return AttentionKernel::kSdpa;
  return AttentionKernel::kAuto;
}
std::atomic<AttentionKernel>& KernelChoice() {
  static std::atomic<AttentionKernel> choice{KernelFromEnv()};
  return choice;
}
}  // namespace

void SetAttentionKernel(AttentionKernel kernel) { KernelChoice() = kernel; }
AttentionKernel GetAttentionKernel() { return KernelChoice(); }
bool UseSdpa(const torch::Tensor& q) {
  switch (GetAttentionKernel()) {
    case AttentionKernel::kEager:
      return false;
    case AttentionKernel::kSdpa:
      return true;
    case AttentionKernel::kAuto:
      break;
  }
  return q.is_cuda();
}

// ---- Attention
// ---------------------------------------------------------------
namespace {
// One new token per row: q [B, nq, 1, hd] over k, v [B, nkv, T, hd] with
// bias [B, 1, 1, T]. The g = nq / nkv query heads of KV group i (heads
// i*g .. i*g+g-1) become g query rows of that group, [B, nkv, g, hd], so the
// keys and values are read once, not copied per head. Returns
// [B, nkv, g, hd] (= [B, nq, hd] in head order). Under SDPA the bias goes in
// as an additive mask (every row sees at least its own token).
torch::Tensor GroupedDecodeAttention(const torch::Tensor& q,
                                     const torch::Tensor& k,
                                     const torch::Tensor& v,
                                     const torch::Tensor& bias, double scale,
                                     bool sdpa) {
  TORCH_CHECK(bias.defined(), "Attention: a decode step needs its mask");
  const int64_t b = q.size(0), nq = q.size(1), hd = q.size(3);
  const int64_t nkv = k.size(1);
  torch::Tensor qg = q.reshape({b, nkv, nq / nkv, hd});
  if (sdpa) {
    return at::scaled_dot_product_attention(qg, k, v, bias, 0.0,
                                            /*is_causal=*/false, scale);
  }
  torch::Tensor scores = torch::matmul(qg, k.transpose(2, 3)) * scale + bias;
  torch::Tensor probs =
      torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type());
  return torch::matmul(probs, v);
}

// One new token per row over a static cache in step-index mode: q
// [B, nq, 1, hd], this token's k, v [B, nkv, 1, hd]. The fused kernel where
// it applies (it writes the cache itself); else Update and
// GroupedDecodeAttention over the whole buffers with `bias`, or with the
// bias built from `step` when undefined. Returns [B, nkv, g, hd].
torch::Tensor StaticStepAttention(const torch::Tensor& q,
                                  const torch::Tensor& k,
                                  const torch::Tensor& v,
                                  const torch::Tensor& bias,
                                  const StaticStepMask& step,
                                  LayerKvCache* cache, double scale) {
  const int64_t b = q.size(0), nq = q.size(1), hd = q.size(3);
  const int64_t nkv = k.size(1);
  if (FusedDecodeAttentionServes(q, hd)) {
    DecodeAttentionInputs in;
    in.q = q.reshape({b, nkv, nq / nkv, hd});
    in.k_new = k;
    in.v_new = v;
    std::tie(in.k_cache, in.v_cache) = cache->StaticBuffers(k, v);
    in.index = step.index;
    in.padding = step.padding;
    in.window = step.window;
    in.scale = scale;
    if (FusedDecodeAttentionApplies(in)) return FusedDecodeAttention(in);
  }
  auto [keys, values] = cache->Update(k, v);
  const torch::Tensor mask = bias.defined()
                                 ? bias
                                 : StaticStepBias(step.index, step.padding,
                                                  step.window, q.scalar_type());
  return GroupedDecodeAttention(q, keys, values, mask, scale, UseSdpa(q));
}

// The decode kernel with the q/k norm and rope folded in, over the fused
// projection's raw rows [B, 1, nkv, g + 2, hd] of one new token: one kernel
// fewer a layer (4B on an H100: 290.0 -> 295.6 tok/s, bench/RESULTS.md).
// Undefined where it does not apply (the caller then runs the norm+rope
// kernel and StaticStepAttention).
torch::Tensor FoldedStepAttention(const torch::Tensor& fused,
                                  const RMSNorm& q_norm, const RMSNorm& k_norm,
                                  const torch::Tensor& cos,
                                  const torch::Tensor& sin,
                                  const StaticStepMask& step,
                                  LayerKvCache* cache, double scale) {
  const int64_t hd = fused.size(4), g = fused.size(3) - 2;
  const torch::Tensor rows = fused.select(1, 0);  // [B, nkv, g + 2, hd]
  if (!FusedDecodeAttentionServes(rows, hd) ||
      q_norm->options.eps() != k_norm->options.eps()) {
    return {};
  }
  DecodeAttentionInputs in;
  in.q = rows.narrow(2, 0, g);
  in.k_new = rows.narrow(2, g, 1);
  in.v_new = rows.narrow(2, g + 1, 1);
  std::tie(in.k_cache, in.v_cache) = cache->StaticBuffers(in.k_new, in.v_new);
  in.index = step.index;
  in.padding = step.padding;
  in.window = step.window;
  in.scale = scale;
  in.q_norm_weight = q_norm->weight;
  in.k_norm_weight = k_norm->weight;
  in.cos = cos;
  in.sin = sin;
  in.norm_eps = q_norm->options.eps();
  in.norm_offset = 1.0;
  if (!FusedDecodeAttentionApplies(in)) return {};
  return FusedDecodeAttention(in);
}
}  // namespace

AttentionImpl::AttentionImpl(const AttentionOptions& opts) : options(opts) {
  const int64_t hd = options.head_dim();
  const int64_t rows = (options.num_heads() + 2 * options.num_kv_heads()) * hd;
  qkv = register_module(
      "qkv", Projection(options.hidden_size(), rows, /*bias=*/false));
  o = register_module("o", Projection(options.num_heads() * hd,
                                      options.hidden_size(), /*bias=*/false));
  q_norm = register_module(
      "q_norm", RMSNorm(RMSNormOptions(hd).eps(options.rms_norm_eps())));
  k_norm = register_module(
      "k_norm", RMSNorm(RMSNormOptions(hd).eps(options.rms_norm_eps())));
}

torch::Tensor AttentionImpl::NormRope(const torch::Tensor& x, RMSNorm& norm,
                                      const torch::Tensor& cos,
                                      const torch::Tensor& sin) {
  return FusedNormRope(x, /*norm=*/true, norm->weight, norm->options.eps(),
                       /*offset=*/1.0, cos, sin);
}

torch::Tensor AttentionImpl::PlannedForward(const torch::Tensor& x,
                                            const torch::Tensor& cos,
                                            const torch::Tensor& sin,
                                            const torch::Tensor& bias,
                                            const CausalPlan& plan) {
  const int64_t b = x.size(0), l = x.size(1);
  const int64_t nq = options.num_heads(), nkv = options.num_kv_heads(),
                hd = options.head_dim();
  const int64_t g = nq / nkv;
  // [B, L, heads, hd] throughout: flash attention's layout, no transposes.
  torch::Tensor fused = qkv(x).view({b, l, nkv, g + 2, hd});
  torch::Tensor q, k, v;
  if (FusedApplies(x)) {
    // One buffer for d(qkv) in backward (model/fused_ops.h).
    std::vector<torch::Tensor> qkv_out =
        FusedQkvNormRope(fused, g, q_norm->weight, k_norm->weight,
                         q_norm->options.eps(), /*offset=*/1.0, cos, sin);
    q = qkv_out[0].view({b, l, nq, hd});
    k = qkv_out[1];
    v = qkv_out[2];
  } else {
    v = fused.select(3, g + 1).contiguous();
    q = fused.narrow(3, 0, g).reshape({b, l, nq, hd});
    k = fused.select(3, g);
    torch::Tensor c = cos.unsqueeze(2), s = sin.unsqueeze(2);
    auto rope = [&](const torch::Tensor& t) {
      return t * c + RotateHalf(t) * s;  // ApplyRope's math, heads on dim 2
    };
    q = rope(q_norm(q));
    k = rope(k_norm(k));
  }
  const double scale = std::pow(options.query_pre_attn_scalar(), -0.5);
  torch::Tensor out;  // [B, L, nq, hd]
  if (plan.window > 0 && plan.window < l) {
    // Flash attention with a left window: keys i - (window - 1) .. i.
    out = std::get<0>(at::_flash_attention_forward(
        q, k, v, std::nullopt, std::nullopt, l, l, 0.0, /*is_causal=*/true,
        /*return_debug_mask=*/false, scale, plan.window - 1, 0));
  } else {
    out = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), std::nullopt, 0.0,
                                           /*is_causal=*/true, scale,
                                           /*enable_gqa=*/g > 1)
              .transpose(1, 2);
  }
  for (const auto& [s0, e0] : plan.dense_rows) {
    TORCH_CHECK(bias.defined() && e0 <= l,
                "Attention: a plan's dense rows need the bias");
    torch::Tensor qs = q.narrow(1, s0, e0 - s0).transpose(1, 2);
    torch::Tensor ks = k.narrow(1, 0, e0).transpose(1, 2);
    torch::Tensor vs = v.narrow(1, 0, e0).transpose(1, 2);
    if (g > 1) {
      ks = ks.unsqueeze(2).expand({b, nkv, g, e0, hd}).reshape({b, nq, e0, hd});
      vs = vs.unsqueeze(2).expand({b, nkv, g, e0, hd}).reshape({b, nq, e0, hd});
    }
    torch::Tensor mask = bias.narrow(2, s0, e0 - s0).narrow(3, 0, e0).eq(0);
    torch::Tensor sub =
        at::scaled_dot_product_attention(qs, ks, vs, mask, 0.0, false, scale);
    out = at::slice_scatter(out, sub.transpose(1, 2), 1, s0, e0);
  }
  return o(out.reshape({b, l, nq * hd}));
}

torch::Tensor AttentionImpl::forward(
    const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
    const torch::Tensor& bias, LayerKvCache* cache, const CausalPlan* plan,
    const StaticStepMask* step) {
  if (plan != nullptr && cache == nullptr && x.size(1) > 1 &&
      CausalPlanApplies(x, options.head_dim())) {
    return PlannedForward(x, cos, sin, bias, *plan);
  }
  const int64_t b = x.size(0), l = x.size(1);
  const int64_t nq = options.num_heads(), nkv = options.num_kv_heads(),
                hd = options.head_dim();
  const int64_t g = nq / nkv;
  // [B, L, nkv, g + 2, hd]: per KV group, its g query heads, then k, then v.
  torch::Tensor fused = qkv(x).view({b, l, nkv, g + 2, hd});
  const double scale = std::pow(options.query_pre_attn_scalar(), -0.5);
  if (step != nullptr && l == 1 && cache != nullptr && cache->is_static() &&
      !at::GradMode::is_enabled() && FusedApplies(x)) {
    torch::Tensor out = FoldedStepAttention(fused, q_norm, k_norm, cos, sin,
                                            *step, cache, scale);
    if (out.defined()) return o(out.reshape({b, 1, nq * hd}));
  }
  torch::Tensor q, k;
  torch::Tensor v = fused.select(3, g + 1).transpose(1, 2);
  if (FusedApplies(x) && !at::GradMode::is_enabled()) {
    // Inference: q and k in one launch, contiguous [B, L, nkv, (g,) hd].
    std::tie(q, k) = FusedQkNormRope(fused, g, q_norm->weight, k_norm->weight,
                                     q_norm->options.eps(), /*offset=*/1.0, cos, sin);
    q = q.view({b, l, nq, hd}).transpose(1, 2);
    k = k.transpose(1, 2);
  } else if (FusedApplies(x)) {
    // [B, L, heads, hd] in, contiguous out; viewed as [B, heads, L, hd].
    q = NormRope(fused.narrow(3, 0, g), q_norm, cos, sin)
            .view({b, l, nq, hd})
            .transpose(1, 2);
    k = NormRope(fused.select(3, g), k_norm, cos, sin).transpose(1, 2);
  } else {
    q = fused.narrow(3, 0, g).reshape({b, l, nq, hd}).transpose(1, 2);
    k = fused.select(3, g).transpose(1, 2);
    q = ApplyRope(q_norm(q), cos, sin);
    k = ApplyRope(k_norm(k), cos, sin);
  }
  if (step != nullptr) {
    TORCH_CHECK(l == 1 && cache != nullptr && cache->is_static(),
                "Attention: a static step mask needs one new token per row "
                "over a static cache");
    torch::Tensor out = StaticStepAttention(q, k, v, bias, *step, cache, scale);
    return o(out.reshape({b, 1, nq * hd}));
  }
  if (cache != nullptr) std::tie(k, v) = cache->Update(k, v);
  const int64_t t = k.size(2);
  TORCH_CHECK(bias.defined() || t == l,
              "Attention: plain causal attention (no bias) needs no cache");
  const bool sdpa = UseSdpa(q);
  if (l == 1 && cache != nullptr && cache->is_static()) {
    torch::Tensor out = GroupedDecodeAttention(q, k, v, bias, scale, sdpa);
    return o(out.reshape({b, 1, nq * hd}));
  }
  if (sdpa && !bias.defined()) {
    // Plain causal: flash attention, grouped-query heads without copies.
    torch::Tensor out = at::scaled_dot_product_attention(
        q, k, v, std::nullopt, 0.0, /*is_causal=*/true, scale,
        /*enable_gqa=*/g > 1);
    return o(out.transpose(1, 2).reshape({b, l, nq * hd}));
  }
  if (g > 1) {
    k = k.unsqueeze(2).expand({b, nkv, g, t, hd}).reshape({b, nq, t, hd});
    v = v.unsqueeze(2).expand({b, nkv, g, t, hd}).reshape({b, nq, t, hd});
  }
  torch::Tensor mask = bias;
  if (!mask.defined()) {
    MaskSpec spec;
    spec.batch = b;
    spec.q_len = l;
    spec.kv_len = t;
    spec.device = x.device();
    mask = BuildAttentionBias(spec, q.scalar_type());
  }
  torch::Tensor out;
  if (sdpa) {
    // A boolean mask: with the additive lowest-value bias, rows whose keys
    // are all masked (left padding) get garbage gradients from the fused
    // kernels' log-sum-exp; with booleans such rows give 0 (HF's eager gives
    // the mean of the values there; no real token sees the difference).
    out = at::scaled_dot_product_attention(q, k, v, mask.eq(0), 0.0, false,
                                           scale);
  } else {
    torch::Tensor scores = torch::matmul(q, k.transpose(2, 3)) * scale + mask;
    torch::Tensor probs =
        torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type());
    out = torch::matmul(probs, v);
  }
  return o(out.transpose(1, 2).reshape({b, l, nq * hd}));
}

// ---- MLP
// ---------------------------------------------------------------------
GatedMlpImpl::GatedMlpImpl(const GatedMlpOptions& opts) : options(opts) {
  gate_up = register_module(
      "gate_up", Projection(options.hidden_size(),
                            2 * options.intermediate_size(), /*bias=*/false));
  down = register_module(
      "down", Projection(options.intermediate_size(), options.hidden_size(),
                         /*bias=*/false));
}

torch::Tensor GatedMlpImpl::forward(const torch::Tensor& x) {
  if (!gate_up->adapter() && GemvServesProjection(x, gate_up->weight)) {
    // Decode: the gelu*up in the gate_up GEMV's epilogue.
    return down(FusedGemvGeluMul(x, gate_up->weight));
  }
  torch::Tensor gu = gate_up(x);
  if (FusedApplies(gu, std::numeric_limits<int64_t>::max())) {
    return down(FusedGeluMul(gu));
  }
  std::vector<torch::Tensor> parts = gu.chunk(2, -1);
  return down(torch::gelu(parts[0], "tanh") * parts[1]);
}

}  // namespace gemma
