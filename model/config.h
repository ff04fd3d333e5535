// Typed Gemma 3 model configuration, read once from a Hugging Face config.json.
//
// Two shapes of config.json exist in the wild and both are accepted:
//  - the original Gemma 3 release: `rope_theta`, `rope_local_base_freq`,
//    `rope_scaling` (applied to full-attention layers only) and
//    `sliding_window_pattern`; most text fields are omitted and take Gemma 3's
//    defaults (see TextConfig below, equal to transformers' Gemma3TextConfig);
//  - the newer transformers 5.x one: `layer_types` and `rope_parameters` keyed
//    by layer type ("sliding_attention", "full_attention").
// Text-only checkpoints (model_type "gemma3_text", Gemma3ForCausalLM) have the
// text fields at the top level; VL checkpoints (model_type "gemma3") nest them
// under `text_config` and `vision_config` (SigLIP).
//
// Every error names the source and the JSON key path, e.g.
//   "/m/config.json: text_config.num_attention_heads: expected an integer".
// This header is LibTorch-free.
#ifndef GEMMA_MODEL_CONFIG_H_
#define GEMMA_MODEL_CONFIG_H_

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gemma {

enum class LayerType { kSliding, kFull };

// "sliding_attention" / "full_attention" (HF's spelling).
const char* LayerTypeName(LayerType type);

// Rotary parameters of one layer type. Only "default" and "linear" rope types
// exist in Gemma 3; others are rejected at parse time.
struct RopeParams {
  std::string rope_type = "default";  // "default" or "linear"
  double theta = 10000.0;             // base
  double factor = 1.0;                // linear scaling: positions / factor
};

// Gemma 3 text decoder. Defaults are transformers' Gemma3TextConfig defaults.
struct TextConfig {
  int64_t vocab_size = 262208;
  int64_t hidden_size = 2304;
  int64_t intermediate_size = 9216;
  int64_t num_layers = 26;
  int64_t num_heads = 8;
  int64_t num_kv_heads = 4;
  int64_t head_dim = 256;
  double query_pre_attn_scalar = 256.0;  // attention scale = this ^ -0.5
  int64_t sliding_window = 4096;         // used by sliding layers only
  std::vector<LayerType> layer_types;    // size num_layers
  RopeParams rope_full{"default", 1000000.0, 1.0};
  RopeParams rope_sliding{"default", 10000.0, 1.0};
  double rms_norm_eps = 1e-6;
  std::string hidden_activation = "gelu_pytorch_tanh";
  int64_t max_position_embeddings = 131072;  // informational
  // Applied to the LM logits by the text-only model (Gemma3ForCausalLM) only;
  // HF's VL model (Gemma3ForConditionalGeneration) never applies it.
  std::optional<double> final_logit_softcapping;
  // Parsed but NOT applied: HF 5.17's Gemma 3 attention never passes it on.
  std::optional<double> attn_logit_softcapping;
  bool tie_word_embeddings = true;
  int64_t pad_token_id = 0;
  int64_t bos_token_id = 2;
  std::vector<int64_t> eos_token_ids = {1};

  const RopeParams& rope(LayerType t) const {
    return t == LayerType::kFull ? rope_full : rope_sliding;
  }
};

// SigLIP vision tower. Defaults are transformers' SiglipVisionConfig defaults.
struct VisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_layers = 12;
  int64_t num_heads = 12;
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 16;
  double layer_norm_eps = 1e-6;
  std::string hidden_act = "gelu_pytorch_tanh";

  int64_t patches_per_side() const { return image_size / patch_size; }
  int64_t num_patches() const {
    return patches_per_side() * patches_per_side();
  }
  int64_t head_dim() const { return hidden_size / num_heads; }
};

// A whole model: text-only (vision empty) or VL.
struct ModelConfig {
  std::string model_type = "gemma3";  // "gemma3" (VL) or "gemma3_text"
  TextConfig text;
  std::optional<VisionConfig> vision;  // set iff VL
  int64_t mm_tokens_per_image = 256;
  int64_t boi_token_id = 255999;
  int64_t eoi_token_id = 256000;
  int64_t image_token_id = 262144;
  std::string dtype;  // "bfloat16", "float32", ... as stored; may be empty

  bool is_vl() const { return vision.has_value(); }
  // Stop tokens: the top-level eos of a VL config, else the text config's.
  std::vector<int64_t> eos_token_ids;
};

// Parses a config.json document. `source` (usually the file path) prefixes
// every error message. Validates the result (ValidateModelConfig).
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& doc,
                                             std::string_view source);
absl::StatusOr<ModelConfig> ParseModelConfigText(std::string_view text,
                                                 std::string_view source);
// Reads `path`, a config.json file or a folder holding one.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

// Checks the invariants the modules rely on (divisibility, window, layer
// types, pooling geometry). Errors name the offending field.
absl::Status ValidateModelConfig(const ModelConfig& config,
                                 std::string_view source);

// The published Gemma 3 VL models: "4b", "12b", "27b" (case-insensitive,
// "gemma-3-4b" style accepted).
absl::StatusOr<ModelConfig> Gemma3Preset(std::string_view name);

// Writes the config in the newer HF shape (layer_types, rope_parameters), which
// ParseModelConfig reads back to an equal struct.
nlohmann::json ModelConfigToJson(const ModelConfig& config);

bool operator==(const RopeParams& a, const RopeParams& b);
bool operator==(const TextConfig& a, const TextConfig& b);
bool operator==(const VisionConfig& a, const VisionConfig& b);
// Compares the architecture (not dtype or eos ids).
bool SameArchitecture(const ModelConfig& a, const ModelConfig& b);

}  // namespace gemma

#endif  // GEMMA_MODEL_CONFIG_H_
