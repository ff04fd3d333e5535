#include "model/gemma4_config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/json_object_reader.h"

namespace gemma {
namespace {

using nlohmann::json;

absl::Status ParseRope(const JsonObjectReader& r, Gemma4Rope* p) {
  GEMMA_RETURN_IF_ERROR(r.String("rope_type", &p->rope_type));
  if (p->rope_type != "default" && p->rope_type != "proportional") {
    return r.Error("rope_type",
                   absl::StrCat("unsupported rope type '", p->rope_type,
                                "' (Gemma 4 uses default or proportional)"));
  }
  GEMMA_RETURN_IF_ERROR(r.Double("rope_theta", &p->theta));
  GEMMA_RETURN_IF_ERROR(r.Double("factor", &p->factor));
  if (p->rope_type == "proportional") {
    GEMMA_RETURN_IF_ERROR(
        r.Double("partial_rotary_factor", &p->partial_rotary_factor));
  } else {
    p->partial_rotary_factor = 1.0;
  }
  return absl::OkStatus();
}

absl::Status ParseEos(const JsonObjectReader& r, std::vector<int64_t>* out) {
  if (!r.Has("eos_token_id")) return absl::OkStatus();
  const json& e = r.Get("eos_token_id");
  out->clear();
  if (e.is_number_integer()) {
    out->push_back(e.get<int64_t>());
    return absl::OkStatus();
  }
  if (!e.is_array())
    return r.Error("eos_token_id", "expected an integer or a list");
  for (const auto& x : e) {
    if (!x.is_number_integer())
      return r.Error("eos_token_id", "expected integers");
    out->push_back(x.get<int64_t>());
  }
  return absl::OkStatus();
}

absl::Status ParseText(const JsonObjectReader& r, Gemma4TextConfig* t) {
  GEMMA_RETURN_IF_ERROR(r.Int("vocab_size", &t->vocab_size));
  GEMMA_RETURN_IF_ERROR(r.Int("hidden_size", &t->hidden_size));
  GEMMA_RETURN_IF_ERROR(r.Int("intermediate_size", &t->intermediate_size));
  GEMMA_RETURN_IF_ERROR(r.Int("num_hidden_layers", &t->num_layers));
  GEMMA_RETURN_IF_ERROR(r.Int("num_attention_heads", &t->num_heads));
  GEMMA_RETURN_IF_ERROR(r.Int("num_key_value_heads", &t->num_kv_heads));
  GEMMA_RETURN_IF_ERROR(r.Int("head_dim", &t->head_dim));
  GEMMA_RETURN_IF_ERROR(r.Bool("attention_k_eq_v", &t->attention_k_eq_v));
  t->global_head_dim = 512;
  GEMMA_RETURN_IF_ERROR(r.Int("global_head_dim", &t->global_head_dim));
  t->num_global_kv_heads = t->num_kv_heads;
  if (t->attention_k_eq_v) {
    // HF applies num_global_key_value_heads only to k_eq_v models.
    GEMMA_RETURN_IF_ERROR(
        r.Int("num_global_key_value_heads", &t->num_global_kv_heads));
  }
  GEMMA_RETURN_IF_ERROR(r.Int("sliding_window", &t->sliding_window));
  GEMMA_RETURN_IF_ERROR(r.Double("rms_norm_eps", &t->rms_norm_eps));
  GEMMA_RETURN_IF_ERROR(r.String("hidden_activation", &t->hidden_activation));
  if (t->hidden_activation != "gelu_pytorch_tanh") {
    return r.Error(
        "hidden_activation",
        absl::StrCat("unsupported activation '", t->hidden_activation,
                     "' (only gelu_pytorch_tanh)"));
  }
  GEMMA_RETURN_IF_ERROR(
      r.Int("max_position_embeddings", &t->max_position_embeddings));
  if (r.Has("final_logit_softcapping")) {
    double cap = 0;
    GEMMA_RETURN_IF_ERROR(r.Double("final_logit_softcapping", &cap));
    t->final_logit_softcapping = cap;
  }
  GEMMA_RETURN_IF_ERROR(
      r.String("use_bidirectional_attention", &t->use_bidirectional_attention));
  if (!t->use_bidirectional_attention.empty() &&
      t->use_bidirectional_attention != "vision") {
    return r.Error("use_bidirectional_attention",
                   absl::StrCat("'", t->use_bidirectional_attention,
                                "' is not supported (null or \"vision\")"));
  }
  GEMMA_RETURN_IF_ERROR(r.Bool("enable_moe_block", &t->enable_moe_block));
  if (t->enable_moe_block) {
    for (const char* key :
         {"num_experts", "top_k_experts", "moe_intermediate_size"}) {
      if (!r.Has(key))
        return r.Error(key, "missing (enable_moe_block is true)");
    }
    GEMMA_RETURN_IF_ERROR(r.Int("num_experts", &t->num_experts));
    GEMMA_RETURN_IF_ERROR(r.Int("top_k_experts", &t->top_k_experts));
    GEMMA_RETURN_IF_ERROR(
        r.Int("moe_intermediate_size", &t->moe_intermediate_size));
  }
  GEMMA_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &t->tie_word_embeddings));
  if (!t->tie_word_embeddings) {
    return r.Error("tie_word_embeddings",
                   "untied LM heads are not supported (Gemma 4 ties them)");
  }
  GEMMA_RETURN_IF_ERROR(r.Int("pad_token_id", &t->pad_token_id));
  GEMMA_RETURN_IF_ERROR(r.Int("bos_token_id", &t->bos_token_id));
  GEMMA_RETURN_IF_ERROR(ParseEos(r, &t->eos_token_ids));

  // Features this port does not implement.
  int64_t ple = 256;  // HF's default turns per-layer embeddings on
  GEMMA_RETURN_IF_ERROR(r.Int("hidden_size_per_layer_input", &ple));
  if (ple != 0) {
    return r.Error("hidden_size_per_layer_input",
                   absl::StrCat(ple,
                                ": per-layer embeddings (Gemma 4 E2B/E4B) "
                                "are not supported; must be 0"));
  }
  int64_t shared = 0;
  GEMMA_RETURN_IF_ERROR(r.Int("num_kv_shared_layers", &shared));
  if (shared != 0) {
    return r.Error(
        "num_kv_shared_layers",
        absl::StrCat(shared, ": KV-shared layers are not supported"));
  }
  bool attention_bias = false;
  GEMMA_RETURN_IF_ERROR(r.Bool("attention_bias", &attention_bias));
  if (attention_bias) {
    return r.Error("attention_bias", "attention biases are not supported");
  }

  // Layer types: explicit, or HF's default 5 sliding : 1 full.
  t->layer_types.clear();
  if (r.Has("layer_types")) {
    const json& lt = r.Get("layer_types");
    if (!lt.is_array()) return r.Error("layer_types", "expected a list");
    for (size_t i = 0; i < lt.size(); ++i) {
      const std::string s = lt[i].is_string() ? lt[i].get<std::string>() : "";
      if (s == "sliding_attention") {
        t->layer_types.push_back(LayerType::kSliding);
      } else if (s == "full_attention") {
        t->layer_types.push_back(LayerType::kFull);
      } else {
        return r.Error(absl::StrCat("layer_types[", i, "]"),
                       absl::StrCat("unknown layer type ", lt[i].dump()));
      }
    }
  } else {
    for (int64_t i = 0; i < t->num_layers; ++i) {
      t->layer_types.push_back((i + 1) % 6 != 0 ? LayerType::kSliding
                                                : LayerType::kFull);
    }
  }
  // HF forces the last layer to full attention.
  if (!t->layer_types.empty()) t->layer_types.back() = LayerType::kFull;

  // Rotary parameters per layer type.
  if (r.Has("rope_parameters")) {
    const json& rp = r.Get("rope_parameters");
    if (!rp.is_object())
      return r.Error("rope_parameters", "expected an object");
    for (const char* type : {"sliding_attention", "full_attention"}) {
      auto it = rp.find(type);
      if (it == rp.end() || it->is_null()) continue;
      if (!it->is_object()) {
        return r.Error(absl::StrCat("rope_parameters.", type),
                       "expected an object");
      }
      JsonObjectReader sub(*it, r.source(),
                           r.KeyPath(absl::StrCat("rope_parameters.", type)));
      GEMMA_RETURN_IF_ERROR(ParseRope(sub, std::string(type) == "full_attention"
                                               ? &t->rope_full
                                               : &t->rope_sliding));
    }
  }

  // transformers 5.17's per_layer_config overrides of the full layers.
  if (r.Has("per_layer_config")) {
    const json& plc = r.Get("per_layer_config");
    if (!plc.is_object())
      return r.Error("per_layer_config", "expected an object");
    bool seen = false;
    for (auto it = plc.begin(); it != plc.end(); ++it) {
      const std::string key_path = absl::StrCat("per_layer_config.", it.key());
      int64_t layer = -1;
      try {
        size_t used = 0;
        layer = std::stoll(it.key(), &used);
        if (used != it.key().size()) layer = -1;
      } catch (...) {
        layer = -1;
      }
      if (layer < 0 || layer >= static_cast<int64_t>(t->layer_types.size())) {
        return r.Error(key_path, "not a layer index of this model");
      }
      if (!it->is_object()) return r.Error(key_path, "expected an object");
      for (auto f = it->begin(); f != it->end(); ++f) {
        if (f.key() != "head_dim" && f.key() != "num_key_value_heads") {
          return r.Error(absl::StrCat(key_path, ".", f.key()),
                         "per-layer override not supported");
        }
      }
      if (t->layer_types[static_cast<size_t>(layer)] != LayerType::kFull) {
        return r.Error(
            key_path,
            "per-layer overrides of sliding layers are not supported");
      }
      JsonObjectReader sub(*it, r.source(), r.KeyPath(key_path));
      int64_t hd = t->global_head_dim, kv = t->num_global_kv_heads;
      GEMMA_RETURN_IF_ERROR(sub.Int("head_dim", &hd));
      if (it->contains("num_key_value_heads")) {
        GEMMA_RETURN_IF_ERROR(sub.Int("num_key_value_heads", &kv));
      } else if (!seen) {
        kv = t->num_kv_heads;
      }
      if (seen && (hd != t->global_head_dim || kv != t->num_global_kv_heads)) {
        return r.Error(key_path,
                       "full layers with different sizes are not supported");
      }
      t->global_head_dim = hd;
      t->num_global_kv_heads = kv;
      seen = true;
    }
  }
  return absl::OkStatus();
}

std::string ToLower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return out;
}

}  // namespace

bool IsGemma4Config(const nlohmann::json& doc) {
  if (!doc.is_object()) return false;
  auto type_of = [](const json& j) {
    auto it = j.find("model_type");
    return it != j.end() && it->is_string() ? it->get<std::string>()
                                            : std::string();
  };
  const std::string t = type_of(doc);
  if (t == "gemma4" || t == "gemma4_text") return true;
  auto tc = doc.find("text_config");
  return tc != doc.end() && tc->is_object() && type_of(*tc) == "gemma4_text";
}

bool IsGemma4ConfigText(std::string_view text) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  return !doc.is_discarded() && IsGemma4Config(doc);
}

absl::StatusOr<Gemma4TextConfig> ParseGemma4TextConfig(
    const nlohmann::json& doc, std::string_view source) {
  if (!doc.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": expected a JSON object"));
  }
  Gemma4TextConfig t;
  auto tc = doc.find("text_config");
  if (tc != doc.end() && !tc->is_null()) {
    if (!tc->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          std::string(source), ": text_config: expected an object"));
    }
    GEMMA_RETURN_IF_ERROR(
        ParseText(JsonObjectReader(*tc, source, "text_config"), &t));
    // A VL config's own eos list wins for stopping.
    GEMMA_RETURN_IF_ERROR(
        ParseEos(JsonObjectReader(doc, source, ""), &t.eos_token_ids));
  } else {
    GEMMA_RETURN_IF_ERROR(ParseText(JsonObjectReader(doc, source, ""), &t));
  }
  GEMMA_RETURN_IF_ERROR(ValidateGemma4TextConfig(t, source));
  return t;
}

absl::StatusOr<Gemma4TextConfig> ParseGemma4TextConfigText(
    std::string_view text, std::string_view source) {
  GEMMA_ASSIGN_OR_RETURN(json doc, ParseJsonText(text, source));
  return ParseGemma4TextConfig(doc, source);
}

absl::Status ValidateGemma4TextConfig(const Gemma4TextConfig& c,
                                      std::string_view source) {
  auto err = [&](std::string_view field, std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source), ": ",
                                                   std::string(field), ": ",
                                                   std::string(what)));
  };
  for (auto [name, v] :
       {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
        {"hidden_size", c.hidden_size},
        {"intermediate_size", c.intermediate_size},
        {"num_hidden_layers", c.num_layers},
        {"num_attention_heads", c.num_heads},
        {"num_key_value_heads", c.num_kv_heads},
        {"head_dim", c.head_dim},
        {"global_head_dim", c.global_head_dim},
        {"num_global_key_value_heads", c.num_global_kv_heads},
        {"sliding_window", c.sliding_window}}) {
    if (v <= 0) return err(name, absl::StrCat("must be positive, got ", v));
  }
  if (static_cast<int64_t>(c.layer_types.size()) != c.num_layers) {
    return err("layer_types",
               absl::StrCat(c.layer_types.size(), " entries for ", c.num_layers,
                            " layers"));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return err("num_key_value_heads",
               absl::StrCat(c.num_kv_heads, " does not divide ", c.num_heads,
                            " attention heads"));
  }
  if (c.num_heads % c.num_global_kv_heads != 0) {
    return err("num_global_key_value_heads",
               absl::StrCat(c.num_global_kv_heads, " does not divide ",
                            c.num_heads, " attention heads"));
  }
  if (c.head_dim % 2 != 0 || c.global_head_dim % 2 != 0) {
    return err("head_dim", "head sizes must be even");
  }
  if (c.enable_moe_block) {
    if (c.num_experts <= 0) return err("num_experts", "must be positive");
    if (c.top_k_experts <= 0 || c.top_k_experts > c.num_experts) {
      return err("top_k_experts",
                 absl::StrCat(c.top_k_experts,
                              " not in [1, num_experts=", c.num_experts, "]"));
    }
    if (c.moe_intermediate_size <= 0) {
      return err("moe_intermediate_size", "must be positive");
    }
  }
  for (const Gemma4Rope* r : {&c.rope_sliding, &c.rope_full}) {
    if (r->theta <= 0 || r->factor <= 0 || r->partial_rotary_factor < 0 ||
        r->partial_rotary_factor > 1) {
      return err("rope_parameters",
                 "theta and factor must be positive, partial_rotary_factor in "
                 "[0, 1]");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Gemma4TextConfig> Gemma4Preset(std::string_view name) {
  std::string n = ToLower(name);
  for (const char* prefix : {"google/", "gemma-4-", "gemma4-"}) {
    if (n.rfind(prefix, 0) == 0) n = n.substr(std::string(prefix).size());
  }
  if (n.size() > 3 && n.substr(n.size() - 3) == "-it") n.resize(n.size() - 3);
  if (n != "26b-a4b") {
    return absl::NotFoundError(absl::StrCat(
        "unknown Gemma 4 preset '", std::string(name), "' (known: 26b-a4b)"));
  }
  // google/gemma-4-26B-A4B text_config as published (config.json on the hub;
  // transcribed in /work/shared/reference/gemma-notes.md section C.1 from
  // transformers' convert_gemma4_weights.py variant table; the global KV head
  // count of 2 is also stated in configuration_gemma4.py's EP plan comment).
  Gemma4TextConfig t;
  t.vocab_size = 262144;
  t.hidden_size = 2816;
  t.intermediate_size = 2112;
  t.num_layers = 30;
  t.num_heads = 16;
  t.num_kv_heads = 8;
  t.head_dim = 256;
  t.global_head_dim = 512;
  t.num_global_kv_heads = 2;
  t.attention_k_eq_v = true;
  t.sliding_window = 1024;
  for (int64_t i = 0; i < t.num_layers; ++i) {
    t.layer_types.push_back((i + 1) % 6 != 0 ? LayerType::kSliding
                                             : LayerType::kFull);
  }
  t.rope_sliding = {"default", 10000.0, 1.0, 1.0};
  t.rope_full = {"proportional", 1000000.0, 0.25, 1.0};
  t.rms_norm_eps = 1e-6;
  t.max_position_embeddings = 262144;
  t.final_logit_softcapping = 30.0;
  t.use_bidirectional_attention = "vision";
  t.enable_moe_block = true;
  t.num_experts = 128;
  t.top_k_experts = 8;
  t.moe_intermediate_size = 704;
  t.eos_token_ids = {1, 106};
  return t;
}

nlohmann::json Gemma4TextConfigToJson(const Gemma4TextConfig& c) {
  json j;
  j["model_type"] = "gemma4_text";
  j["architectures"] = {"Gemma4ForCausalLM"};
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["attention_k_eq_v"] = c.attention_k_eq_v;
  j["sliding_window"] = c.sliding_window;
  json types = json::array();
  json plc = json::object();
  for (size_t i = 0; i < c.layer_types.size(); ++i) {
    types.push_back(LayerTypeName(c.layer_types[i]));
    if (c.layer_types[i] == LayerType::kFull) {
      json o = {{"head_dim", c.global_head_dim}};
      if (c.attention_k_eq_v) o["num_key_value_heads"] = c.num_global_kv_heads;
      plc[std::to_string(i)] = o;
    }
  }
  j["layer_types"] = types;
  j["per_layer_config"] = plc;
  auto rope = [](const Gemma4Rope& r) {
    json o = {{"rope_type", r.rope_type}, {"rope_theta", r.theta}};
    if (r.rope_type == "proportional") {
      o["partial_rotary_factor"] = r.partial_rotary_factor;
    }
    if (r.factor != 1.0) o["factor"] = r.factor;
    return o;
  };
  j["rope_parameters"] = {{"sliding_attention", rope(c.rope_sliding)},
                          {"full_attention", rope(c.rope_full)}};
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["hidden_activation"] = c.hidden_activation;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["final_logit_softcapping"] =
      c.final_logit_softcapping ? json(*c.final_logit_softcapping) : json();
  j["use_bidirectional_attention"] = c.use_bidirectional_attention.empty()
                                         ? json()
                                         : json(c.use_bidirectional_attention);
  j["enable_moe_block"] = c.enable_moe_block;
  if (c.enable_moe_block) {
    j["num_experts"] = c.num_experts;
    j["top_k_experts"] = c.top_k_experts;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
  }
  j["hidden_size_per_layer_input"] = 0;
  j["num_kv_shared_layers"] = 0;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["pad_token_id"] = c.pad_token_id;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_ids.size() == 1 ? json(c.eos_token_ids[0])
                                                  : json(c.eos_token_ids);
  return j;
}

absl::StatusOr<Gemma4ModelConfig> ParseGemma4ModelConfigText(
    std::string_view text, std::string_view source) {
  GEMMA_ASSIGN_OR_RETURN(json doc, ParseJsonText(text, source));
  Gemma4ModelConfig m;
  GEMMA_ASSIGN_OR_RETURN(m.text, ParseGemma4TextConfig(doc, source));
  JsonObjectReader top(doc, source, "");
  GEMMA_RETURN_IF_ERROR(top.Int("image_token_id", &m.image_token_id));
  GEMMA_RETURN_IF_ERROR(top.Int("boi_token_id", &m.boi_token_id));
  GEMMA_RETURN_IF_ERROR(top.Int("eoi_token_id", &m.eoi_token_id));
  if (!top.Has("vision_config")) return m;
  const json& vj = doc.at("vision_config");
  if (!vj.is_object()) return top.Error("vision_config", "expected an object");
  JsonObjectReader r(vj, source, "vision_config");
  Gemma4VisionConfig v;
  GEMMA_RETURN_IF_ERROR(r.Int("hidden_size", &v.hidden_size));
  GEMMA_RETURN_IF_ERROR(r.Int("intermediate_size", &v.intermediate_size));
  GEMMA_RETURN_IF_ERROR(r.Int("num_hidden_layers", &v.num_layers));
  GEMMA_RETURN_IF_ERROR(r.Int("num_attention_heads", &v.num_heads));
  GEMMA_RETURN_IF_ERROR(r.Int("num_key_value_heads", &v.num_kv_heads));
  GEMMA_RETURN_IF_ERROR(r.Int("head_dim", &v.head_dim));
  GEMMA_RETURN_IF_ERROR(r.Double("rms_norm_eps", &v.rms_norm_eps));
  GEMMA_RETURN_IF_ERROR(r.Int("pooling_kernel_size", &v.pooling_kernel_size));
  GEMMA_RETURN_IF_ERROR(r.Int("patch_size", &v.patch_size));
  GEMMA_RETURN_IF_ERROR(
      r.Int("position_embedding_size", &v.position_embedding_size));
  GEMMA_RETURN_IF_ERROR(r.Bool("standardize", &v.standardize));
  bool clipped = false;
  GEMMA_RETURN_IF_ERROR(r.Bool("use_clipped_linears", &clipped));
  if (clipped) {
    return r.Error("use_clipped_linears", "clipped linears are not supported");
  }
  std::string act = "gelu_pytorch_tanh";
  GEMMA_RETURN_IF_ERROR(r.String("hidden_activation", &act));
  if (act != "gelu_pytorch_tanh") {
    return r.Error("hidden_activation", "only gelu_pytorch_tanh is supported");
  }
  if (r.Has("rope_parameters")) {
    const json& rp = vj.at("rope_parameters");
    if (!rp.is_object())
      return r.Error("rope_parameters", "expected an object");
    JsonObjectReader rr(rp, source, "vision_config.rope_parameters");
    GEMMA_RETURN_IF_ERROR(rr.Double("rope_theta", &v.rope_theta));
  }
  for (auto [name, val] :
       {std::pair<const char*, int64_t>{"hidden_size", v.hidden_size},
        {"num_hidden_layers", v.num_layers},
        {"num_attention_heads", v.num_heads},
        {"num_key_value_heads", v.num_kv_heads},
        {"head_dim", v.head_dim},
        {"patch_size", v.patch_size},
        {"pooling_kernel_size", v.pooling_kernel_size},
        {"position_embedding_size", v.position_embedding_size}}) {
    if (val <= 0) return r.Error(name, "must be positive");
  }
  if (v.head_dim % 4 != 0) {
    return r.Error("head_dim", "must be a multiple of 4 (2-D rotary)");
  }
  if (v.num_heads % v.num_kv_heads != 0) {
    return r.Error("num_key_value_heads", "must divide num_attention_heads");
  }
  m.vision = v;
  return m;
}

bool operator==(const Gemma4Rope& a, const Gemma4Rope& b) {
  return a.rope_type == b.rope_type && a.theta == b.theta &&
         a.partial_rotary_factor == b.partial_rotary_factor &&
         a.factor == b.factor;
}

bool operator==(const Gemma4TextConfig& a, const Gemma4TextConfig& b) {
  return a.vocab_size == b.vocab_size && a.hidden_size == b.hidden_size &&
         a.intermediate_size == b.intermediate_size &&
         a.num_layers == b.num_layers && a.num_heads == b.num_heads &&
         a.num_kv_heads == b.num_kv_heads && a.head_dim == b.head_dim &&
         a.global_head_dim == b.global_head_dim &&
         a.num_global_kv_heads == b.num_global_kv_heads &&
         a.attention_k_eq_v == b.attention_k_eq_v &&
         a.sliding_window == b.sliding_window &&
         a.layer_types == b.layer_types && a.rope_sliding == b.rope_sliding &&
         a.rope_full == b.rope_full && a.rms_norm_eps == b.rms_norm_eps &&
         a.hidden_activation == b.hidden_activation &&
         a.final_logit_softcapping == b.final_logit_softcapping &&
         a.use_bidirectional_attention == b.use_bidirectional_attention &&
         a.enable_moe_block == b.enable_moe_block &&
         a.num_experts == b.num_experts && a.top_k_experts == b.top_k_experts &&
         a.moe_intermediate_size == b.moe_intermediate_size &&
         a.tie_word_embeddings == b.tie_word_embeddings &&
         a.pad_token_id == b.pad_token_id && a.bos_token_id == b.bos_token_id &&
         a.eos_token_ids == b.eos_token_ids;
}

}  // namespace gemma
