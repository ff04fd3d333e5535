#include "model/gemma3.h"

#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <string>

#include "model/fused_ops.h"
#include "model/kv_cache.h"
#include "model/recompute.h"

namespace gemma {

Gemma3DecoderLayerImpl::Gemma3DecoderLayerImpl(const TextConfig& c, LayerType t,
                                               TpOptions tp)
    : type(t), tp_(std::move(tp)) {
  const int n = tp_.size();
  TORCH_CHECK(c.num_kv_heads % n == 0 && c.num_heads % n == 0 &&
                  c.intermediate_size % n == 0,
              "tensor parallel: ", n, " ranks do not divide the KV heads (",
              c.num_kv_heads, "), query heads (", c.num_heads,
              ") and intermediate size (", c.intermediate_size, ")");
  auto norm = [&](int64_t dim) {
    return RMSNorm(RMSNormOptions(dim).eps(c.rms_norm_eps));
  };
  input_norm = register_module("input_norm", norm(c.hidden_size));
  attn = register_module(
      "attn", Attention(AttentionOptions(c.hidden_size, c.num_heads / n,
                                         c.num_kv_heads / n, c.head_dim)
                            .query_pre_attn_scalar(c.query_pre_attn_scalar)
                            .rms_norm_eps(c.rms_norm_eps)));
  post_attn_norm = register_module("post_attn_norm", norm(c.hidden_size));
  pre_mlp_norm = register_module("pre_mlp_norm", norm(c.hidden_size));
  mlp = register_module(
      "mlp", GatedMlp(GatedMlpOptions(c.hidden_size, c.intermediate_size / n)));
  post_mlp_norm = register_module("post_mlp_norm", norm(c.hidden_size));
  if (tp_.split()) {
    // qkv by whole KV groups (even rows), gate_up by rows of each block,
    // o and down by columns (model/param_table.h's rules).
    const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim;
    const int64_t qkv_rows = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
    attn->qkv->tp_split = ColumnBlocksSplit(tp_.comm, qkv_rows, h);
    attn->o->tp_split = RowSplit(tp_.comm, h, q);
    mlp->gate_up->tp_split =
        ColumnBlocksSplit(tp_.comm, 2 * c.intermediate_size, h, 2);
    mlp->down->tp_split = RowSplit(tp_.comm, h, c.intermediate_size);
  }
}

torch::Tensor Gemma3DecoderLayerImpl::Enter(const torch::Tensor& x, bool sp) {
  if (!tp_.split()) return x;
  return sp ? GatherFromSequenceRegion(x, *tp_.comm)
            : CopyToTpRegion(x, *tp_.comm);
}

torch::Tensor Gemma3DecoderLayerImpl::Exit(const torch::Tensor& x, bool sp) {
  if (!tp_.split()) return x;
  return sp ? ReduceScatterToSequenceRegion(x, *tp_.comm)
            : ReduceFromTpRegion(x, *tp_.comm);
}

torch::Tensor Gemma3DecoderLayerImpl::forward(
    const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
    const torch::Tensor& bias, LayerKvCache* cache, const CausalPlan* plan,
    const StaticStepMask* step, NormChain* chain) {
  const bool sp = tp_.sequence_parallel && cache == nullptr;
  const torch::Tensor xn =
      chain != nullptr && chain->in.defined() ? chain->in : input_norm(x);
  torch::Tensor a =
      Exit(attn->forward(Enter(xn, sp), cos, sin, bias, cache, plan, step), sp);
  if (!at::GradMode::is_enabled() && FusedApplies(a)) {
    // Inference: each residual add joins its norms in one kernel.
    const double eps = post_attn_norm->options.eps();
    auto [h, y] = FusedResidualNorm(x, a, post_attn_norm->weight,
                                    pre_mlp_norm->weight, eps, /*offset=*/1.0);
    torch::Tensor m = Exit(mlp(Enter(y, sp)), sp);
    auto [out, next] = FusedResidualNorm(
        h, m, post_mlp_norm->weight,
        chain != nullptr ? chain->next_weight : torch::Tensor(), eps, 1.0);
    if (chain != nullptr) chain->out = next;
    return out;
  }
  torch::Tensor h = x + post_attn_norm(a);
  torch::Tensor out =
      h + post_mlp_norm(Exit(mlp(Enter(pre_mlp_norm(h), sp)), sp));
  if (chain != nullptr && chain->next_weight.defined() &&
      !at::GradMode::is_enabled()) {
    // Without the kernels the chain still runs (as the next norm module
    // would), so the CPU suite covers its plumbing.
    chain->out = GemmaRmsNorm(out, chain->next_weight,
                              post_mlp_norm->options.eps(), out.is_cuda());
  }
  return out;
}

Gemma3TextModelImpl::Gemma3TextModelImpl(const TextConfig& config,
                                         bool apply_final_softcap, TpOptions tp)
    : config_(config),
      apply_final_softcap_(apply_final_softcap),
      tp_(std::move(tp)) {
  vocab_shard_ = VocabShardOf(config.vocab_size, tp_.size(), tp_.rank());
  // Without TP the table is [V, H] (shard rows == V); with TP this rank's
  // padded rows. The pad row gets no gradient, as in HF.
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
    Gemma3DecoderLayer layer(config, config.layer_types[static_cast<size_t>(i)],
                             tp_);
    layers->push_back(layer);
    layer_list_.push_back(layer);
  }
  final_norm = register_module(
      "final_norm",
      RMSNorm(RMSNormOptions(config.hidden_size).eps(config.rms_norm_eps)));
  inv_freq_full_ = RopeInverseFrequencies(config.head_dim, config.rope_full);
  inv_freq_sliding_ =
      RopeInverseFrequencies(config.head_dim, config.rope_sliding);
}

torch::Tensor Gemma3TextModelImpl::Embed(const torch::Tensor& input_ids) {
  const float scale =
      static_cast<float>(std::sqrt(static_cast<double>(config_.hidden_size)));
  torch::Tensor s = torch::scalar_tensor(scale, torch::kFloat)
                        .to(embed->weight.scalar_type());
  if (!tp_.split()) return embed(input_ids) * s;
  return VocabParallelEmbedding(input_ids, embed->weight, vocab_shard_,
                                *tp_.comm, config_.pad_token_id) *
         s;
}

torch::Tensor Gemma3TextModelImpl::Decode(const torch::Tensor& embeds,
                                          const DecoderInputs& in) {
  const int64_t b = embeds.size(0), l = embeds.size(1);
  TORCH_CHECK(in.cache == nullptr || !in.cache->step_index().defined(),
              "Decode: a static cache in step-index mode runs through "
              "DecodeStep");
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
  if (in.block_ids.defined()) {
    base.block_ids = past > 0
                         ? torch::constant_pad_nd(in.block_ids, {past, 0}, -1)
                         : in.block_ids;
  }
  if (in.cache == nullptr && !in.attention_mask.defined() &&
      in.position_ids.defined()) {
    base.segment_ids = SegmentIdsFromPositions(in.position_ids, b);
  }

  // Masks and rotary tables per layer type present. A training forward on
  // CUDA follows a CausalPlan (flash attention; the bias only for the rows
  // of image blocks).
  torch::Tensor bias[2], cos[2], sin[2];
  CausalPlan plans[2];
  const bool planned = in.cache == nullptr && !base.padding.defined() &&
                       !base.segment_ids.defined() &&
                       CausalPlanApplies(embeds, config_.head_dim);
  for (int t = 0; t < 2; ++t) {
    const LayerType type = t == 0 ? LayerType::kSliding : LayerType::kFull;
    bool present = false;
    for (LayerType lt : config_.layer_types) present |= lt == type;
    if (!present) continue;
    MaskSpec spec = base;
    const int64_t window =
        type == LayerType::kSliding ? config_.sliding_window : 0;
    spec.sliding_window = window;
    if (in.cache != nullptr) {
      std::tie(spec.kv_offset, spec.kv_len) = in.cache->MaskSizes(window, l);
    } else {
      spec.kv_offset = 0;
      spec.kv_len = l;
    }
    // Plain causal attention needs no bias (flash attention under SDPA).
    const bool plain_causal = in.cache == nullptr && !spec.padding.defined() &&
                              !spec.block_ids.defined() &&
                              !spec.segment_ids.defined() &&
                              (window <= 0 || window >= l);
    if (planned) {
      plans[t] = BuildCausalPlan(base.block_ids, window);
    }
    const bool bias_needed =
        !plain_causal && !(planned && plans[t].dense_rows.empty());
    if (bias_needed) bias[t] = BuildAttentionBias(spec, dtype);
    std::tie(cos[t], sin[t]) = RopeCosSin(
        type == LayerType::kFull ? inv_freq_full_ : inv_freq_sliding_,
        position_ids, dtype);
  }

  // Sequence parallelism: each rank carries its L / tp positions between
  // the layers' tensor-parallel regions.
  const bool sp = tp_.split() && tp_.sequence_parallel && in.cache == nullptr;
  TORCH_CHECK(!sp || l % tp_.size() == 0, "sequence parallel: length ", l,
              " does not divide by tp ", tp_.size(),
              " (pad batches to a multiple of it)");
  torch::Tensor h = sp ? ScatterToSequenceRegion(embeds, *tp_.comm) : embeds;
  for (size_t i = 0; i < layer_list_.size(); ++i) {
    const int t = layer_list_[i]->type == LayerType::kSliding ? 0 : 1;
    LayerKvCache* lc = in.cache != nullptr
                           ? in.cache->layer(static_cast<int64_t>(i))
                           : nullptr;
    const CausalPlan* plan = planned ? &plans[t] : nullptr;
    h = lc == nullptr && RecomputeEnabled()
            ? RecomputedLayerForward(*layer_list_[i], h, cos[t], sin[t],
                                     bias[t], plan)
            : layer_list_[i]->forward(h, cos[t], sin[t], bias[t], lc, plan);
  }
  h = final_norm(h);
  // The head's consumers (Loss, Logits) return the full gradient of the
  // hidden state on every rank: backward keeps this rank's slice of it.
  return sp ? GatherFromSequenceRegion(h, *tp_.comm, /*reduce_grad=*/false) : h;
}

torch::Tensor Gemma3TextModelImpl::DecodeStep(const torch::Tensor& embeds,
                                              const StaticStepInputs& in) {
  TORCH_CHECK(in.cache != nullptr && in.cache->is_static() &&
                  in.cache->step_index().defined(),
              "DecodeStep: needs a static cache with a step index");
  TORCH_CHECK(embeds.dim() == 3 && embeds.size(1) == 1,
              "DecodeStep: one new token per row, got embeddings ",
              embeds.sizes());
  TORCH_CHECK(
      in.cache->num_layers() == static_cast<int64_t>(layer_list_.size()),
      "DecodeStep: the cache has ", in.cache->num_layers(),
      " layers, the model ", layer_list_.size());
  // The mask per layer type, described for the fused decode-attention
  // kernel, which computes it; built as a bias only where the kernel cannot
  // serve (a layer whose operands it rejects after all builds its own).
  StaticStepMask masks[2];
  torch::Tensor bias[2];
  const bool fused = FusedDecodeAttentionServes(embeds, config_.head_dim);
  for (int t = 0; t < 2; ++t) {
    if (!in.cos[t].defined()) continue;
    masks[t].index = in.cache->step_index();
    masks[t].padding = in.padding;
    masks[t].window = t == 0 ? config_.sliding_window : 0;
    if (!fused) {
      bias[t] = StaticStepBias(masks[t].index, masks[t].padding,
                               masks[t].window, embeds.scalar_type());
    }
  }
  torch::Tensor h = embeds;
  // Each layer's last residual add computes the next layer's input norm
  // (the final norm after the last): one kernel a layer fewer.
  NormChain chain;
  for (size_t i = 0; i < layer_list_.size(); ++i) {
    const int t = layer_list_[i]->type == LayerType::kSliding ? 0 : 1;
    TORCH_CHECK(masks[t].index.defined(),
                "DecodeStep: no rotary tables for layer ", i, "'s type");
    chain.in = chain.out;
    chain.out = torch::Tensor();
    chain.next_weight = i + 1 < layer_list_.size()
                            ? layer_list_[i + 1]->input_norm->weight
                            : final_norm->weight;
    h = layer_list_[i]->forward(h, in.cos[t], in.sin[t], bias[t],
                                in.cache->layer(static_cast<int64_t>(i)),
                                /*plan=*/nullptr, &masks[t], &chain);
  }
  return chain.out.defined() ? chain.out : final_norm(h);
}

std::pair<torch::Tensor, torch::Tensor> Gemma3TextModelImpl::Rope(
    LayerType type, const torch::Tensor& position_ids,
    c10::ScalarType dtype) const {
  return RopeCosSin(
      type == LayerType::kFull ? inv_freq_full_ : inv_freq_sliding_,
      position_ids, dtype);
}

torch::Tensor Gemma3TextModelImpl::Logits(const torch::Tensor& hidden) {
  torch::Tensor logits =
      VocabParallelLogits(hidden, embed->weight, config_.vocab_size, tp_);
  if (apply_final_softcap_ && config_.final_logit_softcapping.has_value()) {
    const double cap = *config_.final_logit_softcapping;
    logits = torch::tanh(logits / cap) * cap;
  }
  return logits;
}

TpGrad LoraTpGrad(const std::string& name, const TpOptions& tp) {
  if (!tp.split() || name.rfind("text.", 0) != 0) return TpGrad::kReplicated;
  auto ends_with = [&](const char* suffix) {
    const size_t n = std::strlen(suffix);
    return name.size() >= n && name.compare(name.size() - n, n, suffix) == 0;
  };
  auto any_of = [&](std::initializer_list<const char*> projections) {
    for (const char* p : projections) {
      for (const char* param : {".lora.a", ".lora.b", ".lora.m"}) {
        if (ends_with((std::string(p) + param).c_str())) return true;
      }
    }
    return false;
  };
  const bool column = any_of({"attn.qkv", "attn.qk", "mlp.gate_up"});
  const bool row = any_of({"attn.o", "mlp.down"});
  if (!column && !row) return TpGrad::kReplicated;
  const bool a = ends_with(".lora.a");
  // Column: A replicated (each rank sees its output rows only), B and DoRA's
  // m sharded by rows. Row: A sharded, B and m replicated (each rank sees its
  // input columns only).
  return column == a ? TpGrad::kPartial : TpGrad::kSharded;
}

TpGrad Gemma3TpGrad(const std::string& name, const TpOptions& tp) {
  if (!tp.split() || name.rfind("text.", 0) != 0) return TpGrad::kReplicated;
  auto ends_with = [&](const char* suffix) {
    const size_t n = std::strlen(suffix);
    return name.size() >= n && name.compare(name.size() - n, n, suffix) == 0;
  };
  if (name.find(".lora.") != std::string::npos) return LoraTpGrad(name, tp);
  if (ends_with("attn.q_norm.weight") || ends_with("attn.k_norm.weight"))
    return TpGrad::kPartial;  // shared over heads, each rank has its heads
  if (ends_with("norm.weight"))
    return tp.sequence_parallel ? TpGrad::kPartial : TpGrad::kReplicated;
  return TpGrad::kSharded;  // embed, qkv, o, gate_up, down
}

LmLoss Gemma3TextModelImpl::Loss(const torch::Tensor& hidden,
                                 const torch::Tensor& labels,
                                 const LmLossOptions& options) {
  if (!tp_.split()) return CausalLmLoss(hidden, embed->weight, labels, options);
  return VocabParallelCausalLmLoss(hidden, embed->weight, vocab_shard_,
                                   config_.vocab_size, labels, *tp_.comm,
                                   options);
}

torch::Tensor Gemma3TextModelImpl::forward(const torch::Tensor& input_ids,
                                           const DecoderInputs& inputs) {
  return Logits(Decode(Embed(input_ids), inputs));
}

}  // namespace gemma
