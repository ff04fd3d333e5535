// The only place that spells Hugging Face parameter names: Gemma 3 VL
// (Gemma3ForConditionalGeneration) and Gemma 3 text (Gemma3ForCausalLM)
// checkpoints <-> our names (/work/briefs/MODEL_NAMES.md).
//
// Every one of our tensors is its HF source tensors' row ranges concatenated
// along dim 0 (text q/k/v fused per KV group, gate/up as [gate; up], vision
// q/k/v as [q; k; v]); the other direction splits the same ranges back out.
//
// Key layouts accepted on import (all mapped to one canonical spelling, the one
// transformers 5.17's save_pretrained writes, which is also what we export):
//   VL:   language_model.model.*, model.language_model.*,
//         vision_tower.vision_model.*, model.vision_tower.vision_model.*,
//         vision_tower.*, model.vision_tower.*,
//         multi_modal_projector.*, model.multi_modal_projector.*
//   text: model.*, language_model.model.*, model.language_model.*
//   lm_head.weight / language_model.lm_head.weight are dropped (tied to the
//   embedding); untied checkpoints are refused.
#ifndef GEMMA_MODEL_HF_MAPPING_H_
#define GEMMA_MODEL_HF_MAPPING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gemma {

// The few config.json fields the mapping needs (private to the formats code;
// the model's full config lives elsewhere).
struct HfConfigLite {
  bool vision = false;  // Gemma3ForConditionalGeneration (else text-only)
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0,
          num_layers = 0;
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  bool tie_word_embeddings = true;
  // Vision tower (when `vision`).
  int64_t vision_hidden = 0, vision_intermediate = 0, vision_layers = 0;
  int64_t image_size = 0, patch_size = 0, num_channels = 3;
  std::string raw_json;  // the file's text, kept to write back
};

// Parses config.json text; INVALID_ARGUMENT naming `file` and the missing or
// malformed field (e.g. "config.json: text_config.num_key_value_heads:
// missing").
absl::StatusOr<HfConfigLite> ParseHfConfigLite(absl::string_view text,
                                               absl::string_view file);
absl::StatusOr<HfConfigLite> ReadHfConfigLite(const std::string& path);

// Rows [row_begin, row_end) of HF tensor `hf_name` (canonical spelling).
struct HfRows {
  std::string hf_name;
  int64_t row_begin = 0;
  int64_t row_end = 0;
};

// One of our tensors: `pieces` concatenated along dim 0 give it.
struct ParamMapping {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<HfRows> pieces;
};

struct HfTensorShape {
  std::string hf_name;
  std::vector<int64_t> shape;
};

struct HfMapping {
  std::vector<ParamMapping> params;  // in a stable order
  std::vector<HfTensorShape>
      hf_tensors;  // every HF tensor with the shape config implies
};

// Builds the mapping for `config`; INVALID_ARGUMENT when the head counts are
// inconsistent (num_heads not a multiple of num_kv_heads).
absl::StatusOr<HfMapping> BuildHfMapping(const HfConfigLite& config);

// The canonical HF name of a key found in a checkpoint, "" for a key that is
// deliberately dropped (tied lm_head), NOT_FOUND for a key that fits no layout.
absl::StatusOr<std::string> CanonicalHfName(absl::string_view key,
                                            const HfConfigLite& config);

// The module path in transformers 5.17's in-memory model (what
// named_modules() and peft's adapter keys use) of the module owning canonical
// parameter `canonical_name` (e.g. VL "language_model.model.layers.0.
// self_attn.q_proj.weight" -> "model.language_model.layers.0.self_attn.q_proj",
// "vision_tower.encoder.layers.0.mlp.fc1.bias" ->
// "model.vision_tower.encoder.layers.0.mlp.fc1"; text-only "model.layers.0..."
// stays "model.layers.0..."). INVALID_ARGUMENT for a name of no known prefix.
absl::StatusOr<std::string> HfModulePath(absl::string_view canonical_name,
                                         bool vision);

// config.json text rewritten in the format transformers 5.x writes: legacy
// rope fields (rope_theta, rope_local_base_freq, rope_scaling) become
// rope_parameters {full_attention, sliding_attention}; sliding_window_pattern
// becomes an explicit layer_types list; torch_dtype becomes dtype. Configs
// already in the new format come back unchanged in meaning. INVALID_ARGUMENT
// naming `file` when the text is not a JSON object.
absl::StatusOr<std::string> ModernizeHfConfig(absl::string_view text,
                                              absl::string_view file);

}  // namespace gemma

#endif  // GEMMA_MODEL_HF_MAPPING_H_
