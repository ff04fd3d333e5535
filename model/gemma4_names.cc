#include "model/gemma4_names.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

ParamMapping Whole(std::string ours, std::string hf,
                   std::vector<int64_t> shape) {
  ParamMapping m;
  m.name = std::move(ours);
  m.pieces.push_back({std::move(hf), 0, shape.empty() ? 1 : shape[0]});
  m.shape = std::move(shape);
  return m;
}

ParamMapping One(std::string ours, std::string hf, std::vector<int64_t> shape) {
  ParamMapping m;
  m.name = std::move(ours);
  m.pieces.push_back({std::move(hf), 0, shape[0]});
  m.shape = std::move(shape);
  return m;
}

}  // namespace

std::vector<ParamMapping> BuildGemma4Mapping(const Gemma4TextConfig& c) {
  const int64_t h = c.hidden_size, nq = c.num_heads;
  std::vector<ParamMapping> out;
  out.push_back(
      Whole("text.embed.weight", "embed_tokens.weight", {c.vocab_size, h}));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const LayerType t = c.layer_types[static_cast<size_t>(i)];
    const int64_t hd = c.layer_head_dim(t), nkv = c.layer_kv_heads(t);
    const int64_t g = nq / nkv;
    const bool kv_same = c.k_eq_v(t);
    const std::string ours = absl::StrCat("text.layers.", i, ".");
    const std::string hf = absl::StrCat("layers.", i, ".");
    for (auto [o, n] : std::vector<std::pair<const char*, const char*>>{
             {"input_norm", "input_layernorm"},
             {"post_attn_norm", "post_attention_layernorm"},
             {"pre_mlp_norm", "pre_feedforward_layernorm"},
             {"post_mlp_norm", "post_feedforward_layernorm"}}) {
      out.push_back(Whole(absl::StrCat(ours, o, ".weight"),
                          absl::StrCat(hf, n, ".weight"), {h}));
    }
    // Attention: q/k(/v) fused per KV group.
    ParamMapping qkv;
    qkv.name =
        absl::StrCat(ours, kv_same ? "attn.qk.weight" : "attn.qkv.weight");
    qkv.shape = {(nq + (kv_same ? 1 : 2) * nkv) * hd, h};
    for (int64_t j = 0; j < nkv; ++j) {
      qkv.pieces.push_back({absl::StrCat(hf, "self_attn.q_proj.weight"),
                            j * g * hd, (j + 1) * g * hd});
      qkv.pieces.push_back(
          {absl::StrCat(hf, "self_attn.k_proj.weight"), j * hd, (j + 1) * hd});
      if (!kv_same) {
        qkv.pieces.push_back({absl::StrCat(hf, "self_attn.v_proj.weight"),
                              j * hd, (j + 1) * hd});
      }
    }
    out.push_back(qkv);
    out.push_back(Whole(absl::StrCat(ours, "attn.o.weight"),
                        absl::StrCat(hf, "self_attn.o_proj.weight"),
                        {h, nq * hd}));
    out.push_back(Whole(absl::StrCat(ours, "attn.q_norm.weight"),
                        absl::StrCat(hf, "self_attn.q_norm.weight"), {hd}));
    out.push_back(Whole(absl::StrCat(ours, "attn.k_norm.weight"),
                        absl::StrCat(hf, "self_attn.k_norm.weight"), {hd}));
    // Dense MLP.
    const int64_t im = c.intermediate_size;
    ParamMapping gu;
    gu.name = absl::StrCat(ours, "mlp.gate_up.weight");
    gu.shape = {2 * im, h};
    gu.pieces = {{absl::StrCat(hf, "mlp.gate_proj.weight"), 0, im},
                 {absl::StrCat(hf, "mlp.up_proj.weight"), 0, im}};
    out.push_back(gu);
    out.push_back(Whole(absl::StrCat(ours, "mlp.down.weight"),
                        absl::StrCat(hf, "mlp.down_proj.weight"), {h, im}));
    if (c.enable_moe_block) {
      const int64_t e = c.num_experts, em = c.moe_intermediate_size;
      out.push_back(
          Whole(absl::StrCat(ours, "post_dense_norm.weight"),
                absl::StrCat(hf, "post_feedforward_layernorm_1.weight"), {h}));
      out.push_back(
          Whole(absl::StrCat(ours, "moe.pre_norm.weight"),
                absl::StrCat(hf, "pre_feedforward_layernorm_2.weight"), {h}));
      out.push_back(
          Whole(absl::StrCat(ours, "moe.post_norm.weight"),
                absl::StrCat(hf, "post_feedforward_layernorm_2.weight"), {h}));
      out.push_back(Whole(absl::StrCat(ours, "moe.router.proj.weight"),
                          absl::StrCat(hf, "router.proj.weight"), {e, h}));
      out.push_back(Whole(absl::StrCat(ours, "moe.router.scale"),
                          absl::StrCat(hf, "router.scale"), {h}));
      out.push_back(Whole(absl::StrCat(ours, "moe.router.expert_scale"),
                          absl::StrCat(hf, "router.per_expert_scale"), {e}));
      out.push_back(Whole(absl::StrCat(ours, "moe.experts.gate_up"),
                          absl::StrCat(hf, "experts.gate_up_proj"),
                          {e, 2 * em, h}));
      out.push_back(Whole(absl::StrCat(ours, "moe.experts.down"),
                          absl::StrCat(hf, "experts.down_proj"), {e, h, em}));
    }
    out.push_back(Whole(absl::StrCat(ours, "layer_scalar"),
                        absl::StrCat(hf, "layer_scalar"), {1}));
  }
  out.push_back(Whole("text.final_norm.weight", "norm.weight", {h}));
  return out;
}

std::vector<ParamMapping> BuildGemma4VisionMapping(const Gemma4VisionConfig& v,
                                                   int64_t text_hidden) {
  const std::string hf = "model.vision_tower.";
  const int64_t h = v.hidden_size, hd = v.head_dim, nq = v.num_heads,
                nkv = v.num_kv_heads, g = nq / nkv, im = v.intermediate_size;
  std::vector<ParamMapping> out;
  out.push_back(One("vision.patch_embed.weight",
                    hf + "patch_embedder.input_proj.weight",
                    {h, v.patch_dim()}));
  out.push_back(One("vision.pos_table",
                    hf + "patch_embedder.position_embedding_table",
                    {2, v.position_embedding_size, h}));
  for (int64_t j = 0; j < v.num_layers; ++j) {
    const std::string o = absl::StrCat("vision.layers.", j, ".");
    const std::string l = absl::StrCat(hf, "encoder.layers.", j, ".");
    for (auto [ours, theirs] : std::vector<std::pair<const char*, const char*>>{
             {"input_norm", "input_layernorm"},
             {"post_attn_norm", "post_attention_layernorm"},
             {"pre_mlp_norm", "pre_feedforward_layernorm"},
             {"post_mlp_norm", "post_feedforward_layernorm"}}) {
      out.push_back(One(absl::StrCat(o, ours, ".weight"),
                        absl::StrCat(l, theirs, ".weight"), {h}));
    }
    ParamMapping qkv;
    qkv.name = o + "attn.qkv.weight";
    qkv.shape = {(nq + 2 * nkv) * hd, h};
    for (int64_t k = 0; k < nkv; ++k) {
      qkv.pieces.push_back(
          {l + "self_attn.q_proj.linear.weight", k * g * hd, (k + 1) * g * hd});
      qkv.pieces.push_back(
          {l + "self_attn.k_proj.linear.weight", k * hd, (k + 1) * hd});
      qkv.pieces.push_back(
          {l + "self_attn.v_proj.linear.weight", k * hd, (k + 1) * hd});
    }
    out.push_back(qkv);
    out.push_back(One(o + "attn.o.weight", l + "self_attn.o_proj.linear.weight",
                      {h, nq * hd}));
    out.push_back(
        One(o + "attn.q_norm.weight", l + "self_attn.q_norm.weight", {hd}));
    out.push_back(
        One(o + "attn.k_norm.weight", l + "self_attn.k_norm.weight", {hd}));
    ParamMapping gu;
    gu.name = o + "mlp.gate_up.weight";
    gu.shape = {2 * im, h};
    gu.pieces = {{l + "mlp.gate_proj.linear.weight", 0, im},
                 {l + "mlp.up_proj.linear.weight", 0, im}};
    out.push_back(gu);
    out.push_back(
        One(o + "mlp.down.weight", l + "mlp.down_proj.linear.weight", {h, im}));
  }
  if (v.standardize) {
    out.push_back(One("vision.std_bias", hf + "std_bias", {h}));
    out.push_back(One("vision.std_scale", hf + "std_scale", {h}));
  }
  out.push_back(One("projector.proj.weight",
                    "model.embed_vision.embedding_projection.weight",
                    {text_hidden, h}));
  return out;
}

std::string Gemma4HfTextPrefix(const Gemma4ModelConfig& config) {
  return config.is_vl() ? "model.language_model." : "model.";
}

HfMapping BuildGemma4HfMapping(const Gemma4ModelConfig& config) {
  HfMapping out;
  const std::string prefix = Gemma4HfTextPrefix(config);
  out.params = BuildGemma4Mapping(config.text);
  for (ParamMapping& p : out.params) {
    for (HfRows& piece : p.pieces) piece.hf_name = prefix + piece.hf_name;
  }
  if (config.vision) {
    for (ParamMapping& p :
         BuildGemma4VisionMapping(*config.vision, config.text.hidden_size)) {
      out.params.push_back(std::move(p));
    }
  }
  // Each HF tensor: the rows its pieces cover, our tensor's trailing dims.
  std::map<std::string, size_t> at;
  for (const ParamMapping& p : out.params) {
    for (const HfRows& piece : p.pieces) {
      auto [it, fresh] = at.emplace(piece.hf_name, out.hf_tensors.size());
      if (fresh) {
        std::vector<int64_t> shape = p.shape;
        shape[0] = 0;
        out.hf_tensors.push_back({piece.hf_name, shape});
      }
      int64_t& rows = out.hf_tensors[it->second].shape[0];
      rows = std::max(rows, piece.row_end);
    }
  }
  return out;
}

absl::StatusOr<std::string> CanonicalGemma4HfName(
    const std::string& key, const Gemma4ModelConfig& config) {
  if (key == "lm_head.weight" || key == "language_model.lm_head.weight") {
    return std::string();
  }
  if (config.is_vl()) {
    for (const char* p : {"model.vision_tower.", "model.embed_vision."}) {
      if (absl::StartsWith(key, p)) return key;
    }
  }
  for (const char* p :
       {"model.language_model.", "language_model.model.", "model."}) {
    if (absl::StartsWith(key, p) &&
        !absl::StartsWith(key, "model.vision_tower.") &&
        !absl::StartsWith(key, "model.embed_vision.") &&
        !absl::StartsWith(key, "model.audio_tower.") &&
        !absl::StartsWith(key, "model.embed_audio.")) {
      return Gemma4HfTextPrefix(config) + key.substr(std::string(p).size());
    }
  }
  return absl::NotFoundError(
      absl::StrCat("tensor '", key, "' is not part of this Gemma 4 model (",
                   config.is_vl() ? "VL" : "text-only", " config)"));
}

ShardDims Gemma4ShardDims(const Gemma4TextConfig& config) {
  ShardDims d;
  d.num_kv_heads = config.num_kv_heads;
  d.num_heads = config.num_heads;
  for (LayerType t : config.layer_types)
    d.layer_kv_heads.push_back(config.layer_kv_heads(t));
  return d;
}

}  // namespace gemma
