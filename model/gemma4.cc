#include "model/gemma4.h"

#include <torch/torch.h>

#include <cmath>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/recompute.h"

namespace gemma {

torch::Tensor Gemma4InverseFrequencies(int64_t head_dim,
                                       const Gemma4Rope& rope) {
  const int64_t half = head_dim / 2;
  int64_t rotated = half;
  if (rope.rope_type == "proportional") {
    rotated = static_cast<int64_t>(std::floor(
        rope.partial_rotary_factor * static_cast<double>(head_dim) / 2.0));
  }
  torch::Tensor exponent =
      torch::arange(0, 2 * rotated, 2, torch::kLong).to(torch::kFloat) /
      static_cast<float>(head_dim);
  torch::Tensor inv = torch::pow(rope.theta, exponent).reciprocal();
  if (rotated < half) {
    inv = torch::cat({inv, torch::zeros({half - rotated}, torch::kFloat)});
  }
  return inv / rope.factor;
}

// ---- attention
// ----------------------------------------------------------------

Gemma4AttentionImpl::Gemma4AttentionImpl(int64_t hidden, int64_t nq,
                                         int64_t nkv, int64_t hd, bool kv_same,
                                         double eps_in, bool axial,
                                         const TpOptions& tp)
    : head_dim(hd), k_eq_v(kv_same), eps(eps_in), axial_2d(axial) {
  TORCH_CHECK(nq % nkv == 0, "Gemma4Attention: ", nkv,
              " KV heads do not divide ", nq, " query heads");
  const int64_t n = tp.size();
  TORCH_CHECK(nq % n == 0 && (nkv % n == 0 || n % nkv == 0),
              "tensor parallel: ", n, " ranks do not split ", nq,
              " query heads and ", nkv,
              " KV heads (the KV heads must be a multiple or a divisor of tp)");
  num_heads = nq / n;
  num_kv_heads = nkv % n == 0 ? nkv / n : 1;
  const int64_t kv_rows = (k_eq_v ? 1 : 2) * hd;
  const int64_t out = num_heads * hd + num_kv_heads * kv_rows;
  qkv = register_module(k_eq_v ? "qk" : "qkv", Projection(hidden, out, false));
  o = register_module("o", Projection(num_heads * hd, hidden, false));
  q_norm = register_module("q_norm", Gemma4Norm(hd, eps));
  k_norm = register_module("k_norm", Gemma4Norm(hd, eps));
  if (tp.split()) {
    // The global qkv rows per KV group g: its nq / nkv query heads, key g,
    // value g. A rank holds whole groups, or (nkv < n) its query heads of
    // its group and the group's KV rows.
    const int64_t group_rows = (nq / nkv) * hd + kv_rows;
    std::vector<ProjectionSplit::Ranges> ranges(static_cast<size_t>(n));
    for (int64_t r = 0; r < n; ++r) {
      auto& rr = ranges[static_cast<size_t>(r)];
      if (nkv % n == 0) {
        rr.push_back({r * out, (r + 1) * out});
        continue;
      }
      const int64_t share = n / nkv, g = r / share, s = r % share;
      const int64_t q_rows = num_heads * hd, base = g * group_rows;
      rr.push_back({base + s * q_rows, base + (s + 1) * q_rows});
      rr.push_back({base + (nq / nkv) * hd, base + group_rows});
    }
    qkv->tp_split =
        ColumnSplit(tp.comm, nkv * group_rows, hidden, std::move(ranges));
    o->tp_split = RowSplit(tp.comm, hidden, nq * hd);
  }
  if (qkv->tp_split.has_replicas()) {
    // KV head g is replicated on the n / nkv ranks [g n / nkv, (g+1) n / nkv),
    // each computing it for its own query heads only: the gradient of its
    // rows is the sum of the replicas' gradients.
    qkv->weight.register_hook(
        [s = qkv->tp_split](const torch::Tensor& grad) {
          return SumReplicas(s, grad);
        });
  }
}

torch::Tensor Gemma4AttentionImpl::forward(const torch::Tensor& x,
                                           const torch::Tensor& cos,
                                           const torch::Tensor& sin,
                                           const torch::Tensor& bias,
                                           LayerKvCache* cache) {
  const int64_t b = x.size(0), l = x.size(1);
  const int64_t g = num_heads / num_kv_heads;
  const int64_t per_group = g + (k_eq_v ? 1 : 2);
  torch::Tensor y = qkv(x).view({b, l, num_kv_heads, per_group, head_dim});
  torch::Tensor q = y.narrow(3, 0, g).reshape({b, l, num_heads, head_dim});
  torch::Tensor k_raw = y.select(3, g);
  torch::Tensor v_raw = k_eq_v ? k_raw : y.select(3, g + 1);

  auto rope = [&](const torch::Tensor& x) {
    if (!axial_2d) return ApplyRope(x, cos, sin);
    const int64_t half = head_dim / 2;
    return torch::cat(
        {ApplyRope(x.narrow(-1, 0, half), cos.narrow(-1, 0, half),
                   sin.narrow(-1, 0, half)),
         ApplyRope(x.narrow(-1, half, half), cos.narrow(-1, half, half),
                   sin.narrow(-1, half, half))},
        -1);
  };
  q = rope(q_norm(q).transpose(1, 2));
  torch::Tensor k = rope(k_norm(k_raw).transpose(1, 2));
  torch::Tensor v = Gemma4RmsNorm(v_raw, torch::Tensor(), eps).transpose(1, 2);
  if (cache != nullptr) std::tie(k, v) = cache->Update(k, v);
  if (g > 1) {
    k = k.repeat_interleave(g, 1);
    v = v.repeat_interleave(g, 1);
  }
  torch::Tensor attended;
  if (UseSdpa(q)) {
    // Fused attention without the [B, heads, L, T] scores (the default on
    // CUDA; flash attention takes head_dim <= 256, so the full layers' 512
    // run the memory-efficient kernel). A boolean mask, as for Gemma 3:
    // fully masked rows (left padding) give 0 where the eager path gives the
    // mean of the values; no real token sees the difference.
    attended = at::scaled_dot_product_attention(
        q, k, v, bias.defined() ? std::optional<at::Tensor>(bias.eq(0))
                                : std::nullopt,
        0.0, /*is_causal=*/!bias.defined(), /*scale=*/1.0);
  } else {
    torch::Tensor scores = torch::matmul(q, k.transpose(2, 3));  // scale 1.0
    if (bias.defined()) scores = scores + bias;
    torch::Tensor probs =
        torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type());
    attended = torch::matmul(probs, v);
  }
  return o(attended.transpose(1, 2).reshape({b, l, num_heads * head_dim}));
}

// ---- decoder layer
// -----------------------------------------------------------

Gemma4DecoderLayerImpl::Gemma4DecoderLayerImpl(const Gemma4TextConfig& c,
                                               LayerType t,
                                               std::shared_ptr<Comm> ep,
                                               const TpOptions& tp)
    : type(t), tp_(tp) {
  const int64_t h = c.hidden_size;
  const int64_t n = tp_.size();
  TORCH_CHECK(c.intermediate_size % n == 0, "tensor parallel: ", n,
              " ranks do not divide the intermediate size ",
              c.intermediate_size);
  TORCH_CHECK(!tp_.sequence_parallel,
              "Gemma 4: sequence parallelism is not supported");
  const double eps = c.rms_norm_eps;
  input_norm = register_module("input_norm", Gemma4Norm(h, eps));
  attn = register_module(
      "attn", Gemma4Attention(h, c.num_heads, c.layer_kv_heads(t),
                              c.layer_head_dim(t), c.k_eq_v(t), eps,
                              /*axial_2d=*/false, tp_));
  post_attn_norm = register_module("post_attn_norm", Gemma4Norm(h, eps));
  pre_mlp_norm = register_module("pre_mlp_norm", Gemma4Norm(h, eps));
  mlp = register_module(
      "mlp", GatedMlp(GatedMlpOptions(h, c.intermediate_size / n)));
  post_mlp_norm = register_module("post_mlp_norm", Gemma4Norm(h, eps));
  if (tp_.split()) {
    mlp->gate_up->tp_split =
        ColumnBlocksSplit(tp_.comm, 2 * c.intermediate_size, h, 2);
    mlp->down->tp_split = RowSplit(tp_.comm, h, c.intermediate_size);
  }
  if (c.enable_moe_block) {
    post_dense_norm = register_module("post_dense_norm", Gemma4Norm(h, eps));
    MoeOptions mo;
    mo.hidden_size = h;
    mo.num_experts = c.num_experts;
    mo.top_k = c.top_k_experts;
    mo.intermediate = c.moe_intermediate_size;
    mo.eps = eps;
    moe = register_module("moe", MoeBlock(mo, std::move(ep),
                                          tp_.split() ? tp_.comm : nullptr));
  }
  layer_scalar = register_buffer("layer_scalar", torch::ones({1}));
}

torch::Tensor Gemma4DecoderLayerImpl::forward(const torch::Tensor& x,
                                              const torch::Tensor& cos,
                                              const torch::Tensor& sin,
                                              const torch::Tensor& bias,
                                              LayerKvCache* cache) {
  // Column- then row-parallel under TP: the copy sums the input gradients of
  // the shards, the reduce sums their outputs.
  auto enter = [&](const torch::Tensor& t) {
    return tp_.split() ? CopyToTpRegion(t, *tp_.comm) : t;
  };
  auto exit = [&](const torch::Tensor& t) {
    return tp_.split() ? ReduceFromTpRegion(t, *tp_.comm) : t;
  };
  torch::Tensor h =
      x + post_attn_norm(exit(attn(enter(input_norm(x)), cos, sin, bias, cache)));
  torch::Tensor f = exit(mlp(enter(pre_mlp_norm(h))));
  if (moe) f = post_dense_norm(f) + moe(h);
  return (h + post_mlp_norm(f)) * layer_scalar;
}

// ---- text model
// --------------------------------------------------------------

Gemma4TextModelImpl::Gemma4TextModelImpl(const Gemma4TextConfig& config,
                                         std::shared_ptr<Comm> ep, TpOptions tp)
    : config_(config), tp_(std::move(tp)) {
  if (ep) {
    ep_rank_ = ep->rank();
    ep_size_ = ep->size();
  }
  vocab_shard_ = VocabShardOf(config.vocab_size, tp_.size(), tp_.rank());
  // This rank's padded vocabulary rows (all of them without TP); the pad row
  // gets no gradient, as in HF.
  auto emb_opts =
      torch::nn::EmbeddingOptions(vocab_shard_.rows, config.hidden_size);
  const int64_t local_pad = config.pad_token_id - vocab_shard_.start;
  if (config.pad_token_id >= 0 && local_pad >= 0 &&
      local_pad < vocab_shard_.valid) {
    emb_opts.padding_idx(local_pad);
  }
  embed = register_module("embed", torch::nn::Embedding(emb_opts));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_layers; ++i) {
    Gemma4DecoderLayer layer(config, config.layer_types[static_cast<size_t>(i)],
                             ep, tp_);
    layers->push_back(layer);
    layer_list_.push_back(layer);
  }
  final_norm = register_module(
      "final_norm", Gemma4Norm(config.hidden_size, config.rms_norm_eps));
  inv_freq_full_ =
      Gemma4InverseFrequencies(config.global_head_dim, config.rope_full);
  inv_freq_sliding_ =
      Gemma4InverseFrequencies(config.head_dim, config.rope_sliding);
}

KvCache Gemma4TextModelImpl::NewCache() const {
  TextConfig t;
  t.num_layers = config_.num_layers;
  t.layer_types = config_.layer_types;
  t.sliding_window = config_.sliding_window;
  return KvCache(t);
}

torch::Tensor Gemma4TextModelImpl::Embed(const torch::Tensor& input_ids) {
  const float scale =
      static_cast<float>(std::sqrt(static_cast<double>(config_.hidden_size)));
  torch::Tensor s = torch::scalar_tensor(scale, torch::kFloat)
                        .to(embed->weight.scalar_type());
  if (!tp_.split()) return embed(input_ids) * s;
  return VocabParallelEmbedding(input_ids, embed->weight, vocab_shard_,
                                *tp_.comm, config_.pad_token_id) *
         s;
}

torch::Tensor Gemma4TextModelImpl::Decode(const torch::Tensor& embeds,
                                          const Gemma4DecoderInputs& in) {
  const int64_t b = embeds.size(0), l = embeds.size(1);
  const int64_t past = in.cache != nullptr ? in.cache->seq_len() : 0;
  const auto dtype = embeds.scalar_type();
  const auto device = embeds.device();
  torch::Tensor position_ids = in.position_ids;
  if (!position_ids.defined()) {
    position_ids =
        (torch::arange(
             l, torch::TensorOptions().dtype(torch::kLong).device(device)) +
         past)
            .unsqueeze(0);
  }
  MaskSpec base;
  base.batch = b;
  base.q_len = l;
  base.q_offset = past;
  base.padding = in.attention_mask;
  base.device = device;
  if (in.cache == nullptr && !in.attention_mask.defined() &&
      in.position_ids.defined()) {
    base.segment_ids = SegmentIdsFromPositions(in.position_ids, b);
  }
  torch::Tensor bias[2], cos[2], sin[2];
  for (int t = 0; t < 2; ++t) {
    const LayerType type = t == 0 ? LayerType::kSliding : LayerType::kFull;
    bool present = false;
    for (LayerType lt : config_.layer_types) present |= lt == type;
    if (!present) continue;
    MaskSpec spec = base;
    const int64_t window =
        type == LayerType::kSliding ? config_.sliding_window : 0;
    spec.sliding_window = window;
    // Vision tokens see each other on sliding layers only (HF 5.17).
    if (type == LayerType::kSliding && in.block_ids.defined() &&
        config_.use_bidirectional_attention == "vision") {
      spec.block_ids = past > 0
                           ? torch::constant_pad_nd(in.block_ids, {past, 0}, -1)
                           : in.block_ids;
    }
    if (in.cache != nullptr) {
      std::tie(spec.kv_offset, spec.kv_len) = in.cache->MaskSizes(window, l);
    } else {
      spec.kv_offset = 0;
      spec.kv_len = l;
    }
    bias[t] = BuildAttentionBias(spec, dtype);
    std::tie(cos[t], sin[t]) = RopeCosSin(
        type == LayerType::kFull ? inv_freq_full_ : inv_freq_sliding_,
        position_ids, dtype);
  }
  torch::Tensor h = embeds;
  for (size_t i = 0; i < layer_list_.size(); ++i) {
    const int t = layer_list_[i]->type == LayerType::kSliding ? 0 : 1;
    LayerKvCache* lc = in.cache != nullptr
                           ? in.cache->layer(static_cast<int64_t>(i))
                           : nullptr;
    if (lc == nullptr && RecomputeEnabled()) {
      // Keep only the layer's input; rerun it in backward.
      Gemma4DecoderLayerImpl* layer = layer_list_[i].get();
      h = RecomputedForward(
          h, [layer, c = cos[t], s = sin[t], b = bias[t]](const at::Tensor& x) {
            return layer->forward(x, c, s, b, nullptr);
          });
    } else {
      h = layer_list_[i]->forward(h, cos[t], sin[t], bias[t], lc);
    }
  }
  return final_norm(h);
}

torch::Tensor Gemma4TextModelImpl::Logits(const torch::Tensor& hidden) {
  torch::Tensor logits =
      VocabParallelLogits(hidden, embed->weight, config_.vocab_size, tp_);
  if (config_.final_logit_softcapping.has_value()) {
    const double cap = *config_.final_logit_softcapping;
    logits = torch::tanh(logits / cap) * cap;
  }
  return logits;
}

LmLoss Gemma4TextModelImpl::Loss(const torch::Tensor& hidden,
                                 const torch::Tensor& labels,
                                 LmLossOptions options) {
  options.softcap = config_.final_logit_softcapping.value_or(0.0);
  if (!tp_.split()) return CausalLmLoss(hidden, embed->weight, labels, options);
  return VocabParallelCausalLmLoss(hidden, embed->weight, vocab_shard_,
                                   config_.vocab_size, labels, *tp_.comm,
                                   options);
}

TpGrad Gemma4TpGrad(const std::string& name, const TpOptions& tp) {
  if (!tp.split() || !absl::StartsWith(name, "text.")) {
    return TpGrad::kReplicated;
  }
  if (absl::StrContains(name, ".lora.")) return LoraTpGrad(name, tp);
  if (absl::EndsWith(name, "attn.q_norm.weight") ||
      absl::EndsWith(name, "attn.k_norm.weight") ||
      absl::StrContains(name, ".moe.router.") ||
      absl::EndsWith(name, ".moe.pre_norm.weight") ||
      absl::EndsWith(name, ".moe.post_norm.weight")) {
    return TpGrad::kPartial;
  }
  if (name == "text.embed.weight" || absl::EndsWith(name, "attn.qkv.weight") ||
      absl::EndsWith(name, "attn.qk.weight") ||
      absl::EndsWith(name, "attn.o.weight") ||
      absl::EndsWith(name, "mlp.gate_up.weight") ||
      absl::EndsWith(name, "mlp.down.weight")) {
    return TpGrad::kSharded;
  }
  return TpGrad::kReplicated;  // norms, layer scalars (experts: EP's)
}

torch::Tensor Gemma4TextModelImpl::forward(const torch::Tensor& input_ids,
                                           const Gemma4DecoderInputs& inputs) {
  return Logits(Decode(Embed(input_ids), inputs));
}

torch::Tensor Gemma4TextModelImpl::TokensPerExpert() const {
  std::vector<torch::Tensor> rows;
  for (const auto& layer : layer_list_) {
    if (layer->moe) rows.push_back(layer->moe->TokensPerExpert());
  }
  if (rows.empty()) return torch::zeros({0, 0}, torch::kLong);
  return torch::stack(rows);
}

void Gemma4TextModelImpl::ResetRouterStats() {
  for (auto& layer : layer_list_) {
    if (layer->moe) layer->moe->ResetStats();
  }
}

// ---- weights
// -----------------------------------------------------------------

namespace {

bool IsExpertTensor(const std::string& name) {
  return absl::StrContains(name, ".moe.experts.");
}

}  // namespace

absl::Status LoadGemma4Weights(
    Gemma4TextModelImpl& model,
    const std::map<std::string, torch::Tensor>& weights) {
  return LoadGemma4ModuleWeights(model, weights, "text.", model.ep_rank(),
                                 model.ep_size());
}

absl::Status LoadGemma4ModuleWeights(
    torch::nn::Module& model,
    const std::map<std::string, torch::Tensor>& weights,
    const std::string& prefix, int64_t ep_rank, int64_t ep_size) {
  std::map<std::string, torch::Tensor> targets;
  for (const auto& p : model.named_parameters())
    targets[prefix + p.key()] = p.value();
  for (const auto& p : model.named_buffers())
    targets[prefix + p.key()] = p.value();

  std::vector<std::string> missing, unexpected, bad_shape;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
  for (const auto& [name, dst] : targets) {
    auto it = weights.find(name);
    if (it == weights.end()) {
      missing.push_back(name);
      continue;
    }
    torch::Tensor src = it->second;
    if (IsExpertTensor(name) && ep_size > 1 && src.dim() == dst.dim() &&
        src.size(0) == dst.size(0) * ep_size) {
      src = src.narrow(0, ep_rank * dst.size(0), dst.size(0));
    }
    if (src.sizes() != dst.sizes()) {
      bad_shape.push_back(
          absl::StrCat(name, " (got [", absl::StrJoin(src.sizes(), ","),
                       "], expected [", absl::StrJoin(dst.sizes(), ","), "])"));
      continue;
    }
    copies.emplace_back(dst, src);
  }
  for (const auto& [name, t] : weights) {
    if (absl::StartsWith(name, prefix) && !targets.count(name)) {
      unexpected.push_back(name);
    }
  }
  if (!missing.empty() || !unexpected.empty() || !bad_shape.empty()) {
    std::string msg = "Gemma 4 weights do not fit the model:";
    if (!missing.empty())
      absl::StrAppend(&msg, " missing: ", absl::StrJoin(missing, ", "), ";");
    if (!unexpected.empty())
      absl::StrAppend(&msg, " unexpected: ", absl::StrJoin(unexpected, ", "),
                      ";");
    if (!bad_shape.empty())
      absl::StrAppend(&msg, " wrong shape: ", absl::StrJoin(bad_shape, ", "),
                      ";");
    return absl::InvalidArgumentError(msg);
  }
  torch::NoGradGuard no_grad;
  for (auto& [dst, src] : copies) dst.copy_(src.to(dst.scalar_type()));
  return absl::OkStatus();
}

std::map<std::string, torch::Tensor> Gemma4StateDict(
    Gemma4TextModelImpl& model) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : model.named_parameters()) {
    out["text." + p.key()] = p.value().detach().cpu().clone();
  }
  for (const auto& p : model.named_buffers()) {
    out["text." + p.key()] = p.value().detach().cpu().clone();
  }
  return out;
}

}  // namespace gemma
