// Typed Gemma 4 text configuration (HF Gemma4TextConfig, transformers 5.17),
// read from a Hugging Face config.json: the text fields at the top level
// (model_type "gemma4_text", Gemma4ForCausalLM) or under `text_config`
// (model_type "gemma4", Gemma4ForConditionalGeneration).
//
// Layers come in two types (HF `layer_types`):
//   sliding: head_dim, num_kv_heads, default RoPE (rope_sliding), window;
//   full:    global_head_dim, num_global_kv_heads, proportional RoPE on a part
//            of the head (rope_full), and with attention_k_eq_v no V
//            projection (values are the raw keys).
// Both spellings of the full-layer sizes are read: the hub's explicit
// `global_head_dim` / `num_global_key_value_heads`, and the `per_layer_config`
// {"<layer>": {head_dim, num_key_value_heads}} that transformers 5.17 writes
// (it must agree on every full layer and leave sliding layers alone). Missing
// global_head_dim means 512 (HF's default).
//
// Features of other Gemma 4 variants that the modules do not implement are
// refused at parse time with the key named: per-layer embeddings
// (hidden_size_per_layer_input > 0), KV-shared layers, bidirectional "all".
// This header is LibTorch-free.
#ifndef GEMMA_MODEL_GEMMA4_CONFIG_H_
#define GEMMA_MODEL_GEMMA4_CONFIG_H_

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"  // LayerType

namespace gemma {

// Rotary parameters of one layer type. rope_type "default" rotates the whole
// head; "proportional" rotates the first int(partial_rotary_factor * hd / 2)
// frequency pairs with exponent denominator hd and leaves the rest unrotated.
struct Gemma4Rope {
  std::string rope_type = "default";  // "default" or "proportional"
  double theta = 10000.0;
  double partial_rotary_factor = 1.0;  // proportional only
  double factor = 1.0;                 // divides every inverse frequency
};

// Defaults are transformers 5.17 Gemma4TextConfig's class defaults.
struct Gemma4TextConfig {
  int64_t vocab_size = 262144;
  int64_t hidden_size = 2304;
  int64_t intermediate_size = 9216;  // the dense MLP of every layer
  int64_t num_layers = 30;
  int64_t num_heads = 8;
  int64_t num_kv_heads = 4;         // sliding layers
  int64_t head_dim = 256;           // sliding layers
  int64_t global_head_dim = 512;    // full layers
  int64_t num_global_kv_heads = 4;  // full layers (num_kv_heads if unset)
  bool attention_k_eq_v = false;    // full layers have no V projection
  int64_t sliding_window = 512;
  std::vector<LayerType> layer_types;  // size num_layers; last is full
  Gemma4Rope rope_sliding{"default", 10000.0, 1.0, 1.0};
  Gemma4Rope rope_full{"proportional", 1000000.0, 0.25, 1.0};
  double rms_norm_eps = 1e-6;
  std::string hidden_activation = "gelu_pytorch_tanh";
  int64_t max_position_embeddings = 131072;  // informational
  std::optional<double> final_logit_softcapping;
  // "" (causal), "vision" (image tokens see each other on sliding layers).
  std::string use_bidirectional_attention;
  bool enable_moe_block = false;
  int64_t num_experts = 0;
  int64_t top_k_experts = 0;
  int64_t moe_intermediate_size = 0;
  bool tie_word_embeddings = true;
  int64_t pad_token_id = 0;
  int64_t bos_token_id = 2;
  std::vector<int64_t> eos_token_ids = {1};

  int64_t layer_head_dim(LayerType t) const {
    return t == LayerType::kFull ? global_head_dim : head_dim;
  }
  int64_t layer_kv_heads(LayerType t) const {
    return t == LayerType::kFull ? num_global_kv_heads : num_kv_heads;
  }
  // Whether layers of type `t` derive V from K (no V projection).
  bool k_eq_v(LayerType t) const {
    return attention_k_eq_v && t == LayerType::kFull;
  }
  const Gemma4Rope& rope(LayerType t) const {
    return t == LayerType::kFull ? rope_full : rope_sliding;
  }
};

// The Gemma 4 vision encoder (HF Gemma4VisionConfig; defaults are its class
// defaults). Clipped linears (E2B/E4B) are refused at parse time.
struct Gemma4VisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_layers = 16;
  int64_t num_heads = 12;
  int64_t num_kv_heads = 12;
  int64_t head_dim = 64;
  double rms_norm_eps = 1e-6;
  double rope_theta = 100.0;  // axial 2-D RoPE
  int64_t pooling_kernel_size = 3;
  int64_t patch_size = 16;
  int64_t position_embedding_size = 10240;
  bool standardize = false;
  int64_t num_channels = 3;

  int64_t patch_dim() const { return num_channels * patch_size * patch_size; }
};

// A whole Gemma 4 model: text-only (Gemma4ForCausalLM) or VL
// (Gemma4ForConditionalGeneration, `vision` set).
struct Gemma4ModelConfig {
  Gemma4TextConfig text;
  std::optional<Gemma4VisionConfig> vision;
  int64_t image_token_id = 258880;
  int64_t boi_token_id = 255999;
  int64_t eoi_token_id = 258882;
  bool is_vl() const { return vision.has_value(); }
};

// Parses a whole config.json (text and, when present, vision_config).
absl::StatusOr<Gemma4ModelConfig> ParseGemma4ModelConfigText(
    std::string_view text, std::string_view source);

// Parses the text config out of a config.json document (nested under
// text_config when present). Errors name `source` and the key path.
absl::StatusOr<Gemma4TextConfig> ParseGemma4TextConfig(
    const nlohmann::json& doc, std::string_view source);
absl::StatusOr<Gemma4TextConfig> ParseGemma4TextConfigText(
    std::string_view text, std::string_view source);

// True when a config.json document describes a Gemma 4 model (model_type
// gemma4 / gemma4_text, or text_config.model_type gemma4_text).
bool IsGemma4Config(const nlohmann::json& doc);
bool IsGemma4ConfigText(std::string_view text);

// Divisibility, layer types, MoE sizes; errors name the field.
absl::Status ValidateGemma4TextConfig(const Gemma4TextConfig& c,
                                      std::string_view source);

// The published text decoder of google/gemma-4-26B-A4B(-it) ("26b-a4b",
// case-insensitive, "gemma-4-26b-a4b" accepted).
absl::StatusOr<Gemma4TextConfig> Gemma4Preset(std::string_view name);

// The config in the shape transformers 5.17 writes for Gemma4TextConfig
// (model_type gemma4_text, per_layer_config for the full layers); parsing it
// back gives an equal struct.
nlohmann::json Gemma4TextConfigToJson(const Gemma4TextConfig& c);

bool operator==(const Gemma4Rope& a, const Gemma4Rope& b);
bool operator==(const Gemma4TextConfig& a, const Gemma4TextConfig& b);

}  // namespace gemma

#endif  // GEMMA_MODEL_GEMMA4_CONFIG_H_
