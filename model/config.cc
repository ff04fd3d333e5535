#include "model/config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_io.h"
#include "common/status_macros.h"
#include "model/json_object_reader.h"

namespace gemma {
namespace {

using nlohmann::json;

absl::StatusOr<LayerType> ParseLayerType(const std::string& s,
                                         const JsonObjectReader& r,
                                         std::string_view key) {
  if (s == "sliding_attention") return LayerType::kSliding;
  if (s == "full_attention") return LayerType::kFull;
  return r.Error(
      key, absl::StrCat("unknown layer type \"", s,
                        "\" (expected sliding_attention or full_attention)"));
}

// Reads one rope parameter object ({rope_type|type, rope_theta, factor}) into
// `p`, keeping the fields it does not set.
absl::Status ParseRope(const JsonObjectReader& r, RopeParams* p) {
  GEMMA_RETURN_IF_ERROR(r.String("type", &p->rope_type));
  GEMMA_RETURN_IF_ERROR(r.String("rope_type", &p->rope_type));
  GEMMA_RETURN_IF_ERROR(r.Double("rope_theta", &p->theta));
  if (p->rope_type == "default") {
    p->factor = 1.0;
  } else if (p->rope_type == "linear") {
    if (!r.Has("factor"))
      return r.Error("factor", "linear rope scaling needs a factor");
    GEMMA_RETURN_IF_ERROR(r.Double("factor", &p->factor));
    if (!(p->factor > 0)) return r.Error("factor", "must be positive");
  } else {
    return r.Error("rope_type",
                   absl::StrCat("unsupported rope type \"", p->rope_type,
                                "\" (Gemma 3 uses default or linear)"));
  }
  return absl::OkStatus();
}

absl::Status ParseText(const JsonObjectReader& r, TextConfig* t) {
  GEMMA_RETURN_IF_ERROR(r.Int("vocab_size", &t->vocab_size));
  GEMMA_RETURN_IF_ERROR(r.Int("hidden_size", &t->hidden_size));
  GEMMA_RETURN_IF_ERROR(r.Int("intermediate_size", &t->intermediate_size));
  GEMMA_RETURN_IF_ERROR(r.Int("num_hidden_layers", &t->num_layers));
  GEMMA_RETURN_IF_ERROR(r.Int("num_attention_heads", &t->num_heads));
  GEMMA_RETURN_IF_ERROR(r.Int("num_key_value_heads", &t->num_kv_heads));
  GEMMA_RETURN_IF_ERROR(r.Int("head_dim", &t->head_dim));
  GEMMA_RETURN_IF_ERROR(
      r.Double("query_pre_attn_scalar", &t->query_pre_attn_scalar));
  if (r.Has("sliding_window")) {
    GEMMA_RETURN_IF_ERROR(r.Int("sliding_window", &t->sliding_window));
  } else if (r.IsNull("sliding_window")) {
    t->sliding_window =
        0;  // null: no sliding window (must have no sliding layers)
  }
  GEMMA_RETURN_IF_ERROR(r.Double("rms_norm_eps", &t->rms_norm_eps));
  GEMMA_RETURN_IF_ERROR(r.String("hidden_act", &t->hidden_activation));
  GEMMA_RETURN_IF_ERROR(r.String("hidden_activation", &t->hidden_activation));
  GEMMA_RETURN_IF_ERROR(
      r.Int("max_position_embeddings", &t->max_position_embeddings));
  GEMMA_RETURN_IF_ERROR(
      r.OptDouble("final_logit_softcapping", &t->final_logit_softcapping));
  GEMMA_RETURN_IF_ERROR(
      r.OptDouble("attn_logit_softcapping", &t->attn_logit_softcapping));
  GEMMA_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &t->tie_word_embeddings));
  GEMMA_RETURN_IF_ERROR(r.Int("pad_token_id", &t->pad_token_id));
  GEMMA_RETURN_IF_ERROR(r.Int("bos_token_id", &t->bos_token_id));
  GEMMA_RETURN_IF_ERROR(r.IntList("eos_token_id", &t->eos_token_ids));
  bool attention_bias = false;
  GEMMA_RETURN_IF_ERROR(r.Bool("attention_bias", &attention_bias));
  if (attention_bias)
    return r.Error("attention_bias", "Gemma 3 has no attention bias");
  bool bidirectional = false;
  GEMMA_RETURN_IF_ERROR(r.Bool("use_bidirectional_attention", &bidirectional));
  if (bidirectional) {
    return r.Error(
        "use_bidirectional_attention",
        "bidirectional text attention (EmbeddingGemma) is not supported");
  }

  // Layer types: explicit list, else the legacy pattern (global when
  // (i + 1) % pattern == 0), default pattern 6.
  if (r.Has("layer_types")) {
    const json& v = r.Get("layer_types");
    if (!v.is_array())
      return r.Error("layer_types", "expected a list of strings");
    t->layer_types.clear();
    for (const json& e : v) {
      if (!e.is_string())
        return r.Error("layer_types", "expected a list of strings");
      GEMMA_ASSIGN_OR_RETURN(
          LayerType lt, ParseLayerType(e.get<std::string>(), r, "layer_types"));
      t->layer_types.push_back(lt);
    }
  } else {
    int64_t pattern = 6;
    GEMMA_RETURN_IF_ERROR(r.Int("sliding_window_pattern", &pattern));
    if (pattern <= 0)
      return r.Error("sliding_window_pattern", "must be positive");
    t->layer_types.clear();
    for (int64_t i = 0; i < t->num_layers; ++i) {
      t->layer_types.push_back((i + 1) % pattern == 0 ? LayerType::kFull
                                                      : LayerType::kSliding);
    }
  }

  // Rotary: newer rope_parameters per layer type, else the legacy keys.
  t->rope_full = RopeParams{"default", 1000000.0, 1.0};
  t->rope_sliding = RopeParams{"default", 10000.0, 1.0};
  if (r.Has("rope_parameters")) {
    GEMMA_ASSIGN_OR_RETURN(JsonObjectReader rp, r.Object("rope_parameters"));
    if (rp.Has("rope_type") || rp.Has("rope_theta")) {
      return r.Error("rope_parameters",
                     "expected one entry per layer type (full_attention, "
                     "sliding_attention)");
    }
    // Legacy thetas still fill what rope_parameters leaves out (HF setdefault).
    GEMMA_RETURN_IF_ERROR(r.Double("rope_theta", &t->rope_full.theta));
    GEMMA_RETURN_IF_ERROR(
        r.Double("rope_local_base_freq", &t->rope_sliding.theta));
    if (rp.Has("full_attention")) {
      GEMMA_ASSIGN_OR_RETURN(JsonObjectReader full,
                             rp.Object("full_attention"));
      GEMMA_RETURN_IF_ERROR(ParseRope(full, &t->rope_full));
    }
    if (rp.Has("sliding_attention")) {
      GEMMA_ASSIGN_OR_RETURN(JsonObjectReader sl,
                             rp.Object("sliding_attention"));
      GEMMA_RETURN_IF_ERROR(ParseRope(sl, &t->rope_sliding));
    }
  } else {
    GEMMA_RETURN_IF_ERROR(r.Double("rope_theta", &t->rope_full.theta));
    GEMMA_RETURN_IF_ERROR(
        r.Double("rope_local_base_freq", &t->rope_sliding.theta));
    if (r.Has("rope_scaling")) {
      // Merged into the full-attention layers only (HF's conversion rule).
      GEMMA_ASSIGN_OR_RETURN(JsonObjectReader rs, r.Object("rope_scaling"));
      GEMMA_RETURN_IF_ERROR(ParseRope(rs, &t->rope_full));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseVision(const JsonObjectReader& r, VisionConfig* v) {
  GEMMA_RETURN_IF_ERROR(r.Int("hidden_size", &v->hidden_size));
  GEMMA_RETURN_IF_ERROR(r.Int("intermediate_size", &v->intermediate_size));
  GEMMA_RETURN_IF_ERROR(r.Int("num_hidden_layers", &v->num_layers));
  GEMMA_RETURN_IF_ERROR(r.Int("num_attention_heads", &v->num_heads));
  GEMMA_RETURN_IF_ERROR(r.Int("num_channels", &v->num_channels));
  GEMMA_RETURN_IF_ERROR(r.Int("image_size", &v->image_size));
  GEMMA_RETURN_IF_ERROR(r.Int("patch_size", &v->patch_size));
  GEMMA_RETURN_IF_ERROR(r.Double("layer_norm_eps", &v->layer_norm_eps));
  GEMMA_RETURN_IF_ERROR(r.String("hidden_act", &v->hidden_act));
  return absl::OkStatus();
}

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

const char* LayerTypeName(LayerType type) {
  return type == LayerType::kFull ? "full_attention" : "sliding_attention";
}

absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& doc,
                                             std::string_view source) {
  if (!doc.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": expected a JSON object"));
  }
  JsonObjectReader top(doc, source, "");
  ModelConfig c;
  std::string model_type;
  GEMMA_RETURN_IF_ERROR(top.String("model_type", &model_type));
  bool text_only = false;
  if (model_type == "gemma3_text") {
    text_only = true;
  } else if (model_type == "gemma3") {
    text_only = false;
  } else if (model_type.empty()) {
    // No model_type: a nested text_config means VL.
    text_only = !top.Has("text_config");
  } else {
    return top.Error("model_type",
                     absl::StrCat("unsupported model type \"", model_type,
                                  "\" (expected gemma3 or gemma3_text)"));
  }
  GEMMA_RETURN_IF_ERROR(top.String("torch_dtype", &c.dtype));
  GEMMA_RETURN_IF_ERROR(top.String("dtype", &c.dtype));
  if (text_only) {
    c.model_type = "gemma3_text";
    GEMMA_RETURN_IF_ERROR(ParseText(top, &c.text));
    c.eos_token_ids = c.text.eos_token_ids;
  } else {
    c.model_type = "gemma3";
    if (top.Has("text_config")) {
      GEMMA_ASSIGN_OR_RETURN(JsonObjectReader tr, top.Object("text_config"));
      GEMMA_RETURN_IF_ERROR(ParseText(tr, &c.text));
    } else {
      GEMMA_RETURN_IF_ERROR(ParseText(
          JsonObjectReader(json::object(), source, "text_config"), &c.text));
    }
    c.vision = VisionConfig{};
    if (top.Has("vision_config")) {
      GEMMA_ASSIGN_OR_RETURN(JsonObjectReader vr, top.Object("vision_config"));
      GEMMA_RETURN_IF_ERROR(ParseVision(vr, &*c.vision));
    }
    GEMMA_RETURN_IF_ERROR(
        top.Int("mm_tokens_per_image", &c.mm_tokens_per_image));
    GEMMA_RETURN_IF_ERROR(top.Int("boi_token_index", &c.boi_token_id));
    GEMMA_RETURN_IF_ERROR(top.Int("boi_token_id", &c.boi_token_id));
    GEMMA_RETURN_IF_ERROR(top.Int("eoi_token_index", &c.eoi_token_id));
    GEMMA_RETURN_IF_ERROR(top.Int("eoi_token_id", &c.eoi_token_id));
    GEMMA_RETURN_IF_ERROR(top.Int("image_token_index", &c.image_token_id));
    GEMMA_RETURN_IF_ERROR(top.Int("image_token_id", &c.image_token_id));
    c.eos_token_ids = c.text.eos_token_ids;
    GEMMA_RETURN_IF_ERROR(top.IntList("eos_token_id", &c.eos_token_ids));
  }
  GEMMA_RETURN_IF_ERROR(ValidateModelConfig(c, source));
  return c;
}

absl::StatusOr<ModelConfig> ParseModelConfigText(std::string_view text,
                                                 std::string_view source) {
  GEMMA_ASSIGN_OR_RETURN(json doc, ParseJsonText(text, source));
  return ParseModelConfig(doc, source);
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    file = (std::filesystem::path(path) / "config.json").string();
  GEMMA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(file));
  return ParseModelConfigText(text, file);
}

absl::Status ValidateModelConfig(const ModelConfig& c,
                                 std::string_view source) {
  const std::string tp = c.is_vl() ? "text_config." : "";
  auto err = [&](const std::string& key, const std::string& what) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": ", key, ": ", what));
  };
  const TextConfig& t = c.text;
  for (auto [name, value] :
       {std::pair<const char*, int64_t>{"vocab_size", t.vocab_size},
        {"hidden_size", t.hidden_size},
        {"intermediate_size", t.intermediate_size},
        {"num_hidden_layers", t.num_layers},
        {"num_attention_heads", t.num_heads},
        {"num_key_value_heads", t.num_kv_heads},
        {"head_dim", t.head_dim}}) {
    if (value <= 0)
      return err(tp + name, absl::StrCat("must be positive, got ", value));
  }
  if (t.num_heads % t.num_kv_heads != 0) {
    return err(tp + "num_key_value_heads",
               absl::StrCat("num_attention_heads (", t.num_heads,
                            ") is not a multiple of ", t.num_kv_heads));
  }
  // transformers' Gemma3TextConfig.validate_architecture enforces this too.
  if (t.hidden_size % t.num_heads != 0) {
    return err(tp + "num_attention_heads",
               absl::StrCat("hidden_size (", t.hidden_size,
                            ") is not a multiple of ", t.num_heads));
  }
  if (t.head_dim % 2 != 0)
    return err(tp + "head_dim", "must be even for rotary embeddings");
  if (!(t.query_pre_attn_scalar > 0))
    return err(tp + "query_pre_attn_scalar", "must be positive");
  if (static_cast<int64_t>(t.layer_types.size()) != t.num_layers) {
    return err(tp + "layer_types",
               absl::StrCat("has ", t.layer_types.size(), " entries for ",
                            t.num_layers, " layers"));
  }
  bool any_sliding = std::count(t.layer_types.begin(), t.layer_types.end(),
                                LayerType::kSliding) > 0;
  if (any_sliding && t.sliding_window <= 0) {
    return err(tp + "sliding_window",
               "must be positive when there are sliding layers");
  }
  if (t.hidden_activation != "gelu_pytorch_tanh" &&
      t.hidden_activation != "gelu_tanh") {
    return err(
        tp + "hidden_activation",
        absl::StrCat("unsupported activation \"", t.hidden_activation, "\""));
  }
  if (!t.tie_word_embeddings) {
    return err(tp + "tie_word_embeddings", "untied LM heads are not supported");
  }
  if (c.is_vl()) {
    const VisionConfig& v = *c.vision;
    for (auto [name, value] :
         {std::pair<const char*, int64_t>{"hidden_size", v.hidden_size},
          {"intermediate_size", v.intermediate_size},
          {"num_hidden_layers", v.num_layers},
          {"num_attention_heads", v.num_heads},
          {"num_channels", v.num_channels},
          {"image_size", v.image_size},
          {"patch_size", v.patch_size}}) {
      if (value <= 0) {
        return err(absl::StrCat("vision_config.", name),
                   absl::StrCat("must be positive, got ", value));
      }
    }
    if (v.hidden_size % v.num_heads != 0) {
      return err("vision_config.num_attention_heads",
                 "does not divide hidden_size");
    }
    if (v.image_size % v.patch_size != 0) {
      return err("vision_config.patch_size", "does not divide image_size");
    }
    if (v.hidden_act != "gelu_pytorch_tanh" && v.hidden_act != "gelu_tanh") {
      return err("vision_config.hidden_act",
                 absl::StrCat("unsupported activation \"", v.hidden_act, "\""));
    }
    const auto side = static_cast<int64_t>(
        std::llround(std::sqrt(double(c.mm_tokens_per_image))));
    if (c.mm_tokens_per_image <= 0 || side * side != c.mm_tokens_per_image) {
      return err("mm_tokens_per_image", "must be a perfect square");
    }
    if (v.patches_per_side() % side != 0) {
      return err(
          "mm_tokens_per_image",
          absl::StrCat("pool grid ", side, " does not divide the patch grid ",
                       v.patches_per_side()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> Gemma3Preset(std::string_view name) {
  std::string n = ToLower(name);
  for (std::string_view prefix : {"gemma-3-", "gemma3-", "gemma3_"}) {
    if (n.rfind(prefix, 0) == 0) n = n.substr(prefix.size());
  }
  for (std::string_view suffix : {"-it", "-pt"}) {
    if (n.size() > suffix.size() &&
        n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) {
      n = n.substr(0, n.size() - suffix.size());
    }
  }
  ModelConfig c;
  c.model_type = "gemma3";
  c.dtype = "bfloat16";
  TextConfig& t = c.text;
  t.sliding_window = 1024;
  t.rope_full = RopeParams{"linear", 1000000.0, 8.0};
  t.rope_sliding = RopeParams{"default", 10000.0, 1.0};
  if (n == "4b") {
    t.hidden_size = 2560, t.intermediate_size = 10240, t.num_layers = 34;
    t.num_heads = 8, t.num_kv_heads = 4, t.head_dim = 256,
    t.query_pre_attn_scalar = 256;
  } else if (n == "12b") {
    t.hidden_size = 3840, t.intermediate_size = 15360, t.num_layers = 48;
    t.num_heads = 16, t.num_kv_heads = 8, t.head_dim = 256,
    t.query_pre_attn_scalar = 256;
  } else if (n == "27b") {
    t.hidden_size = 5376, t.intermediate_size = 21504, t.num_layers = 62;
    t.num_heads = 32, t.num_kv_heads = 16, t.head_dim = 128,
    t.query_pre_attn_scalar = 168;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown Gemma 3 preset \"", std::string(name),
                     "\" (expected 4b, 12b or 27b)"));
  }
  t.layer_types.clear();
  for (int64_t i = 0; i < t.num_layers; ++i) {
    t.layer_types.push_back((i + 1) % 6 == 0 ? LayerType::kFull
                                             : LayerType::kSliding);
  }
  t.eos_token_ids = {1};
  VisionConfig v;  // SigLIP so400m at 896 px
  v.hidden_size = 1152, v.intermediate_size = 4304, v.num_layers = 27,
  v.num_heads = 16;
  v.image_size = 896, v.patch_size = 14;
  c.vision = v;
  c.eos_token_ids = {1, 106};
  GEMMA_RETURN_IF_ERROR(
      ValidateModelConfig(c, absl::StrCat("preset ", std::string(name))));
  return c;
}

namespace {
json RopeToJson(const RopeParams& p) {
  json j = {{"rope_type", p.rope_type}, {"rope_theta", p.theta}};
  if (p.rope_type == "linear") j["factor"] = p.factor;
  return j;
}
json TextToJson(const TextConfig& t) {
  json types = json::array();
  for (LayerType lt : t.layer_types) types.push_back(LayerTypeName(lt));
  json j = {{"model_type", "gemma3_text"},
            {"vocab_size", t.vocab_size},
            {"hidden_size", t.hidden_size},
            {"intermediate_size", t.intermediate_size},
            {"num_hidden_layers", t.num_layers},
            {"num_attention_heads", t.num_heads},
            {"num_key_value_heads", t.num_kv_heads},
            {"head_dim", t.head_dim},
            // transformers 5.x validates this field as an int.
            {"query_pre_attn_scalar",
             t.query_pre_attn_scalar == std::floor(t.query_pre_attn_scalar)
                 ? json(static_cast<int64_t>(t.query_pre_attn_scalar))
                 : json(t.query_pre_attn_scalar)},
            {"sliding_window", t.sliding_window},
            {"layer_types", types},
            {"rope_parameters",
             {{"full_attention", RopeToJson(t.rope_full)},
              {"sliding_attention", RopeToJson(t.rope_sliding)}}},
            {"rms_norm_eps", t.rms_norm_eps},
            {"hidden_activation", t.hidden_activation},
            {"max_position_embeddings", t.max_position_embeddings},
            {"tie_word_embeddings", t.tie_word_embeddings},
            {"pad_token_id", t.pad_token_id},
            {"bos_token_id", t.bos_token_id},
            {"eos_token_id", t.eos_token_ids}};
  j["final_logit_softcapping"] = t.final_logit_softcapping
                                     ? json(*t.final_logit_softcapping)
                                     : json(nullptr);
  j["attn_logit_softcapping"] = t.attn_logit_softcapping
                                    ? json(*t.attn_logit_softcapping)
                                    : json(nullptr);
  return j;
}
}  // namespace

nlohmann::json ModelConfigToJson(const ModelConfig& c) {
  if (!c.is_vl()) {
    json j = TextToJson(c.text);
    j["architectures"] = {"Gemma3ForCausalLM"};
    if (!c.dtype.empty()) j["dtype"] = c.dtype;
    return j;
  }
  const VisionConfig& v = *c.vision;
  json j = {{"model_type", "gemma3"},
            {"architectures", {"Gemma3ForConditionalGeneration"}},
            {"text_config", TextToJson(c.text)},
            {"vision_config",
             {{"model_type", "siglip_vision_model"},
              {"hidden_size", v.hidden_size},
              {"intermediate_size", v.intermediate_size},
              {"num_hidden_layers", v.num_layers},
              {"num_attention_heads", v.num_heads},
              {"num_channels", v.num_channels},
              {"image_size", v.image_size},
              {"patch_size", v.patch_size},
              {"layer_norm_eps", v.layer_norm_eps},
              {"hidden_act", v.hidden_act},
              {"vision_use_head", false}}},
            {"mm_tokens_per_image", c.mm_tokens_per_image},
            {"boi_token_index", c.boi_token_id},
            {"eoi_token_index", c.eoi_token_id},
            {"image_token_index", c.image_token_id},
            {"eos_token_id", c.eos_token_ids}};
  if (!c.dtype.empty()) j["dtype"] = c.dtype;
  return j;
}

bool operator==(const RopeParams& a, const RopeParams& b) {
  return a.rope_type == b.rope_type && a.theta == b.theta &&
         a.factor == b.factor;
}

bool operator==(const TextConfig& a, const TextConfig& b) {
  return a.vocab_size == b.vocab_size && a.hidden_size == b.hidden_size &&
         a.intermediate_size == b.intermediate_size &&
         a.num_layers == b.num_layers && a.num_heads == b.num_heads &&
         a.num_kv_heads == b.num_kv_heads && a.head_dim == b.head_dim &&
         a.query_pre_attn_scalar == b.query_pre_attn_scalar &&
         a.sliding_window == b.sliding_window &&
         a.layer_types == b.layer_types && a.rope_full == b.rope_full &&
         a.rope_sliding == b.rope_sliding && a.rms_norm_eps == b.rms_norm_eps &&
         a.hidden_activation == b.hidden_activation &&
         a.final_logit_softcapping == b.final_logit_softcapping &&
         a.attn_logit_softcapping == b.attn_logit_softcapping &&
         a.tie_word_embeddings == b.tie_word_embeddings;
}

bool operator==(const VisionConfig& a, const VisionConfig& b) {
  return a.hidden_size == b.hidden_size &&
         a.intermediate_size == b.intermediate_size &&
         a.num_layers == b.num_layers && a.num_heads == b.num_heads &&
         a.num_channels == b.num_channels && a.image_size == b.image_size &&
         a.patch_size == b.patch_size && a.layer_norm_eps == b.layer_norm_eps &&
         a.hidden_act == b.hidden_act;
}

bool SameArchitecture(const ModelConfig& a, const ModelConfig& b) {
  if (a.model_type != b.model_type || !(a.text == b.text) ||
      a.is_vl() != b.is_vl())
    return false;
  if (!a.is_vl()) return true;
  return *a.vision == *b.vision &&
         a.mm_tokens_per_image == b.mm_tokens_per_image &&
         a.image_token_id == b.image_token_id &&
         a.boi_token_id == b.boi_token_id && a.eoi_token_id == b.eoi_token_id;
}

}  // namespace gemma
