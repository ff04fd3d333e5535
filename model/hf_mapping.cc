#include "model/hf_mapping.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/file_io.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using nlohmann::json;

absl::Status ConfigError(absl::string_view file, absl::string_view field,
                         absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", field, ": ", why));
}

// Reads a positive integer `key` of `obj` (whose path is `path`). When the key
// is absent, uses `fallback` if it is > 0, else fails.
absl::Status ReadInt(const json& obj, absl::string_view path, const char* key,
                     absl::string_view file, int64_t* out,
                     int64_t fallback = 0) {
  std::string field =
      path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (fallback > 0) {
      *out = fallback;
      return absl::OkStatus();
    }
    return ConfigError(file, field, "missing");
  }
  if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
    return ConfigError(file, field, "not a positive integer");
  }
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

// Parses config.json `text` (read from `file`), which must hold an object.
absl::StatusOr<json> ParseConfigObject(absl::string_view text,
                                       absl::string_view file) {
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": not valid JSON: ", e.what()));
  }
  if (!root.is_object())
    return ConfigError(file, "(root)", "not a JSON object");
  return root;
}

// Text prefix rules: accepted spelling -> canonical spelling.
struct Rule {
  const char* from;
  const char* to;
};
constexpr Rule kVlRules[] = {
    {"model.language_model.", "language_model.model."},
    {"language_model.model.", "language_model.model."},
    {"model.vision_tower.vision_model.", "vision_tower."},
    {"vision_tower.vision_model.", "vision_tower."},
    {"model.vision_tower.", "vision_tower."},
    {"vision_tower.", "vision_tower."},
    {"model.multi_modal_projector.", "multi_modal_projector."},
    {"multi_modal_projector.", "multi_modal_projector."},
};
constexpr Rule kTextRules[] = {
    {"model.language_model.", "model."},
    {"language_model.model.", "model."},
    {"model.", "model."},
};

}  // namespace

absl::StatusOr<std::string> HfModulePath(absl::string_view canonical_name,
                                         bool vision) {
  absl::string_view rest = canonical_name;
  std::string prefix;
  if (vision && absl::ConsumePrefix(&rest, "language_model.model.")) {
    prefix = "model.language_model.";
  } else if (vision && absl::ConsumePrefix(&rest, "vision_tower.")) {
    prefix = "model.vision_tower.";
  } else if (vision &&
             absl::ConsumePrefix(&rest, "multi_modal_projector.")) {
    prefix = "model.multi_modal_projector.";
  } else if (!vision && absl::ConsumePrefix(&rest, "model.")) {
    prefix = "model.";
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "HF parameter '", canonical_name, "': no known ",
        vision ? "Gemma3ForConditionalGeneration" : "Gemma3ForCausalLM",
        " prefix"));
  }
  const size_t dot = rest.rfind('.');
  if (dot == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HF parameter '", canonical_name, "': no module part"));
  }
  return absl::StrCat(prefix, rest.substr(0, dot));
}

absl::StatusOr<HfConfigLite> ParseHfConfigLite(absl::string_view text,
                                               absl::string_view file) {
  GEMMA_ASSIGN_OR_RETURN(json root, ParseConfigObject(text, file));
  HfConfigLite c;
  c.raw_json = std::string(text);
  std::string model_type = root.value("model_type", std::string());
  {
    // Gemma 4 has its own mapping (model/hf_mapping_gemma4.h).
    auto tc_it = root.find("text_config");
    const std::string text_type = tc_it != root.end() && tc_it->is_object()
                                      ? tc_it->value("model_type", std::string())
                                      : std::string();
    if (model_type == "gemma4" || model_type == "gemma4_text" ||
        text_type == "gemma4_text") {
      return absl::UnimplementedError(absl::StrCat(
          file, ": model_type ", model_type,
          ": Gemma 4 folders are read by LoadGemma4Model / LoadGemma4Folder "
          "(model/gemma4_model.h, model/hf_mapping_gemma4.h); the sharded "
          "checkpoint conversion does not handle them yet"));
    }
  }
  c.vision = root.contains("vision_config") || model_type == "gemma3";
  const json* tc = &root;
  std::string tpath;
  if (c.vision) {
    auto it = root.find("text_config");
    if (it == root.end() || !it->is_object())
      return ConfigError(file, "text_config", "missing");
    tc = &*it;
    tpath = "text_config";
  }
  GEMMA_RETURN_IF_ERROR(ReadInt(*tc, tpath, "vocab_size", file, &c.vocab_size));
  GEMMA_RETURN_IF_ERROR(
      ReadInt(*tc, tpath, "hidden_size", file, &c.hidden_size));
  GEMMA_RETURN_IF_ERROR(
      ReadInt(*tc, tpath, "intermediate_size", file, &c.intermediate_size));
  GEMMA_RETURN_IF_ERROR(
      ReadInt(*tc, tpath, "num_hidden_layers", file, &c.num_layers));
  GEMMA_RETURN_IF_ERROR(
      ReadInt(*tc, tpath, "num_attention_heads", file, &c.num_heads));
  GEMMA_RETURN_IF_ERROR(
      ReadInt(*tc, tpath, "num_key_value_heads", file, &c.num_kv_heads));
  GEMMA_RETURN_IF_ERROR(ReadInt(*tc, tpath, "head_dim", file, &c.head_dim));
  for (const json* o : std::initializer_list<const json*>{tc, &root}) {
    auto it = o->find("tie_word_embeddings");
    if (it != o->end() && it->is_boolean() && !it->get<bool>())
      c.tie_word_embeddings = false;
  }
  if (c.vision) {
    auto it = root.find("vision_config");
    if (it == root.end() || !it->is_object())
      return ConfigError(file, "vision_config", "missing");
    const json& vc = *it;
    GEMMA_RETURN_IF_ERROR(
        ReadInt(vc, "vision_config", "hidden_size", file, &c.vision_hidden));
    GEMMA_RETURN_IF_ERROR(ReadInt(vc, "vision_config", "intermediate_size",
                                  file, &c.vision_intermediate));
    GEMMA_RETURN_IF_ERROR(ReadInt(vc, "vision_config", "num_hidden_layers",
                                  file, &c.vision_layers));
    GEMMA_RETURN_IF_ERROR(
        ReadInt(vc, "vision_config", "image_size", file, &c.image_size));
    GEMMA_RETURN_IF_ERROR(
        ReadInt(vc, "vision_config", "patch_size", file, &c.patch_size));
    GEMMA_RETURN_IF_ERROR(
        ReadInt(vc, "vision_config", "num_channels", file, &c.num_channels, 3));
    auto head = vc.find("vision_use_head");
    if (head != vc.end() && head->is_boolean() && head->get<bool>()) {
      return ConfigError(file, "vision_config.vision_use_head",
                         "true is not supported (Gemma 3 has no pooling head)");
    }
  }
  return c;
}

absl::StatusOr<HfConfigLite> ReadHfConfigLite(const std::string& path) {
  GEMMA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseHfConfigLite(text, path);
}

absl::StatusOr<HfMapping> BuildHfMapping(const HfConfigLite& c) {
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_attention_heads ", c.num_heads,
        " is not a multiple of num_key_value_heads ", c.num_kv_heads));
  }
  if (!c.tie_word_embeddings) {
    return absl::UnimplementedError(
        "tie_word_embeddings=false: an untied lm_head is not supported");
  }
  HfMapping m;
  auto hf = [&](std::string name, std::vector<int64_t> shape) {
    m.hf_tensors.push_back({name, shape});
    return name;
  };
  // A 1:1 tensor.
  auto same = [&](std::string ours, std::string theirs,
                  std::vector<int64_t> shape) {
    int64_t rows = shape.empty() ? 1 : shape[0];
    m.params.push_back(
        {std::move(ours), shape, {{hf(std::move(theirs), shape), 0, rows}}});
  };
  const int64_t H = c.hidden_size, I = c.intermediate_size, hd = c.head_dim;
  const int64_t nq = c.num_heads, nkv = c.num_kv_heads, qpg = nq / nkv;
  const std::string tp = c.vision ? "language_model.model." : "model.";
  same("text.embed.weight", tp + "embed_tokens.weight", {c.vocab_size, H});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string o = absl::StrCat("text.layers.", i, ".");
    const std::string t = absl::StrCat(tp, "layers.", i, ".");
    same(o + "input_norm.weight", t + "input_layernorm.weight", {H});
    {
      const std::string q = hf(t + "self_attn.q_proj.weight", {nq * hd, H});
      const std::string k = hf(t + "self_attn.k_proj.weight", {nkv * hd, H});
      const std::string v = hf(t + "self_attn.v_proj.weight", {nkv * hd, H});
      ParamMapping p{o + "attn.qkv.weight", {(nq + 2 * nkv) * hd, H}, {}};
      for (int64_t g = 0; g < nkv; ++g) {
        p.pieces.push_back({q, g * qpg * hd, (g + 1) * qpg * hd});
        p.pieces.push_back({k, g * hd, (g + 1) * hd});
        p.pieces.push_back({v, g * hd, (g + 1) * hd});
      }
      m.params.push_back(std::move(p));
    }
    same(o + "attn.o.weight", t + "self_attn.o_proj.weight", {H, nq * hd});
    same(o + "attn.q_norm.weight", t + "self_attn.q_norm.weight", {hd});
    same(o + "attn.k_norm.weight", t + "self_attn.k_norm.weight", {hd});
    same(o + "post_attn_norm.weight", t + "post_attention_layernorm.weight",
         {H});
    same(o + "pre_mlp_norm.weight", t + "pre_feedforward_layernorm.weight",
         {H});
    {
      const std::string g = hf(t + "mlp.gate_proj.weight", {I, H});
      const std::string u = hf(t + "mlp.up_proj.weight", {I, H});
      m.params.push_back(
          {o + "mlp.gate_up.weight", {2 * I, H}, {{g, 0, I}, {u, 0, I}}});
    }
    same(o + "mlp.down.weight", t + "mlp.down_proj.weight", {H, I});
    same(o + "post_mlp_norm.weight", t + "post_feedforward_layernorm.weight",
         {H});
  }
  same("text.final_norm.weight", tp + "norm.weight", {H});
  if (!c.vision) return m;

  const int64_t Hv = c.vision_hidden, Iv = c.vision_intermediate,
                P = c.patch_size;
  const int64_t np_side = c.image_size / P;
  const std::string vp = "vision_tower.";
  same("vision.patch_embed.weight", vp + "embeddings.patch_embedding.weight",
       {Hv, c.num_channels, P, P});
  same("vision.patch_embed.bias", vp + "embeddings.patch_embedding.bias", {Hv});
  same("vision.pos_embed.weight", vp + "embeddings.position_embedding.weight",
       {np_side * np_side, Hv});
  for (int64_t i = 0; i < c.vision_layers; ++i) {
    const std::string o = absl::StrCat("vision.layers.", i, ".");
    const std::string t = absl::StrCat(vp, "encoder.layers.", i, ".");
    for (const char* wb : {"weight", "bias"}) {
      const bool w = absl::string_view(wb) == "weight";
      auto shp = [&](int64_t rows, int64_t cols) {
        return w ? std::vector<int64_t>{rows, cols}
                 : std::vector<int64_t>{rows};
      };
      same(o + "ln1." + wb, t + "layer_norm1." + wb, {Hv});
      ParamMapping qkv{o + "attn.qkv." + wb, shp(3 * Hv, Hv), {}};
      for (const char* x : {"q_proj.", "k_proj.", "v_proj."}) {
        qkv.pieces.push_back(
            {hf(t + "self_attn." + x + wb, shp(Hv, Hv)), 0, Hv});
      }
      m.params.push_back(std::move(qkv));
      same(o + "attn.o." + wb, t + "self_attn.out_proj." + wb, shp(Hv, Hv));
      same(o + "ln2." + wb, t + "layer_norm2." + wb, {Hv});
      same(o + "mlp.fc1." + wb, t + "mlp.fc1." + wb, shp(Iv, Hv));
      same(o + "mlp.fc2." + wb, t + "mlp.fc2." + wb, shp(Hv, Iv));
    }
  }
  same("vision.post_norm.weight", vp + "post_layernorm.weight", {Hv});
  same("vision.post_norm.bias", vp + "post_layernorm.bias", {Hv});
  same("projector.norm.weight", "multi_modal_projector.mm_soft_emb_norm.weight",
       {Hv});
  same("projector.proj.weight",
       "multi_modal_projector.mm_input_projection_weight", {Hv, H});
  return m;
}

absl::StatusOr<std::string> CanonicalHfName(absl::string_view key,
                                            const HfConfigLite& c) {
  if (key == "lm_head.weight" || key == "language_model.lm_head.weight") {
    if (!c.tie_word_embeddings)
      return absl::UnimplementedError("untied lm_head");
    return std::string();
  }
  auto apply = [&](const auto& rules) -> absl::StatusOr<std::string> {
    for (const Rule& r : rules) {
      if (absl::StartsWith(key, r.from)) {
        return absl::StrCat(r.to, key.substr(absl::string_view(r.from).size()));
      }
    }
    return absl::NotFoundError(
        absl::StrCat("tensor '", key, "' matches no Gemma 3 key layout"));
  };
  if (c.vision) return apply(kVlRules);
  return apply(kTextRules);
}

absl::StatusOr<std::string> ModernizeHfConfig(absl::string_view text,
                                              absl::string_view file) {
  GEMMA_ASSIGN_OR_RETURN(json root, ParseConfigObject(text, file));
  auto modernize_text = [](json& tc) {
    if (!tc.contains("rope_parameters") || tc["rope_parameters"].is_null()) {
      json full = {{"rope_type", "default"},
                   {"rope_theta", tc.value("rope_theta", 1000000.0)}};
      auto scaling = tc.find("rope_scaling");
      if (scaling != tc.end() && scaling->is_object()) {
        for (const auto& [k, v] : scaling->items())
          full[k == "type" ? "rope_type" : k] = v;
      }
      json sliding = {
          {"rope_type", "default"},
          {"rope_theta", tc.value("rope_local_base_freq", 10000.0)}};
      tc["rope_parameters"] = {{"full_attention", full},
                               {"sliding_attention", sliding}};
    }
    tc.erase("rope_theta");
    tc.erase("rope_local_base_freq");
    tc.erase("rope_scaling");
    if ((!tc.contains("layer_types") || tc["layer_types"].is_null()) &&
        tc.value("num_hidden_layers", 0) > 0) {
      int pattern = 6;
      if (tc.contains("sliding_window_pattern") &&
          tc["sliding_window_pattern"].is_number_integer()) {
        pattern = std::max(1, tc["sliding_window_pattern"].get<int>());
      }
      json types = json::array();
      for (int i = 0; i < tc["num_hidden_layers"].get<int>(); ++i) {
        types.push_back((i + 1) % pattern ? "sliding_attention"
                                          : "full_attention");
      }
      tc["layer_types"] = types;
      tc["_sliding_window_pattern"] = pattern;
    }
    tc.erase("sliding_window_pattern");
  };
  auto tc = root.find("text_config");
  if (tc != root.end() && tc->is_object()) {
    modernize_text(*tc);
  } else if (!root.contains("vision_config")) {
    modernize_text(root);
  }
  for (json* o : {&root, tc != root.end() ? &*tc : nullptr}) {
    if (o == nullptr || !o->is_object()) continue;
    if (o->contains("torch_dtype")) {
      if (!o->contains("dtype")) (*o)["dtype"] = (*o)["torch_dtype"];
      o->erase("torch_dtype");
    }
  }
  return root.dump(2);
}

}  // namespace gemma
