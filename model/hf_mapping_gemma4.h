// Gemma 4 text checkpoints: Hugging Face names <-> ours (model/gemma4.h), and
// reading / writing model folders. The only place spelling Gemma 4 HF names.
//
// Each of our tensors is HF row ranges concatenated along dim 0:
//   attn.qkv  = per KV group j: q_proj rows of its heads, k_proj head j,
//               v_proj head j            (layers with a V projection)
//   attn.qk   = the same without V       (full layers with attention_k_eq_v;
//                                          HF has no v_proj there)
//   mlp.gate_up = [gate_proj; up_proj]
//   moe.experts.gate_up / down = experts.gate_up_proj / down_proj unchanged
//                                ([E, 2 Im, H] gate rows first, [E, H, Im])
//   moe.router.{proj.weight, scale, expert_scale} = router.{proj.weight,
//                                scale, per_expert_scale}
//   post_dense_norm = post_feedforward_layernorm_1, moe.pre_norm =
//   pre_feedforward_layernorm_2, moe.post_norm = post_feedforward_layernorm_2,
//   layer_scalar = layer_scalar (a buffer in both).
// Import accepts the prefixes "model." (Gemma4ForCausalLM),
// "model.language_model." (Gemma4ForConditionalGeneration) and
// "language_model.model."; "lm_head.weight" is dropped (tied); the vision and
// audio towers' keys (model.vision_tower., model.embed_vision.,
// model.audio_tower., model.embed_audio.) are skipped by the text model.
// Export writes the Gemma4ForCausalLM spelling ("model.").
// Conversion in both directions only slices and concatenates: bit-exact.
#ifndef GEMMA_MODEL_HF_MAPPING_GEMMA4_H_
#define GEMMA_MODEL_HF_MAPPING_GEMMA4_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/gemma4_config.h"
#include "model/gemma4_names.h"
#include "model/hf_mapping.h"  // ParamMapping, HfRows

namespace gemma {

// BuildGemma4Mapping (our names <-> HF pieces): model/gemma4_names.h.

// HF tensors (any accepted prefix) -> ours. InvalidArgument naming `source`
// and the tensor: unknown key, missing tensor, wrong shape.
absl::StatusOr<std::map<std::string, at::Tensor>> Gemma4FromHf(
    const std::map<std::string, at::Tensor>& hf, const Gemma4TextConfig& config,
    const std::string& source);

// Ours -> HF (prefix "model."), every HF tensor of the text model.
absl::StatusOr<std::map<std::string, at::Tensor>> Gemma4ToHf(
    const std::map<std::string, at::Tensor>& ours,
    const Gemma4TextConfig& config, const std::string& source);

// A Gemma 4 model folder: config.json and its weights under our names.
struct Gemma4Weights {
  std::string config_json;
  Gemma4TextConfig config;
  std::string kind;                           // "hf" or "ours"
  std::map<std::string, at::Tensor> tensors;  // our names, stored dtype
};

// Every tensor of the *.safetensors files in `dir`, as stored (names, dtype).
absl::StatusOr<std::map<std::string, at::Tensor>> ReadSafetensorsFolder(
    const std::string& dir);

// Reads a folder holding config.json and *.safetensors, either HF names (any
// accepted prefix, sharded or not) or ours ("text.*"). Errors name the folder,
// file and tensor.
absl::StatusOr<Gemma4Weights> LoadGemma4Folder(const std::string& dir);

// Writes `tensors` (our names) to `dir` (created) as config.json +
// model.safetensors in HF names (`hf` true) or ours; each file is written to a
// temporary name and renamed.
absl::Status SaveGemma4Folder(const std::string& dir,
                              const std::string& config_json,
                              const Gemma4TextConfig& config,
                              const std::map<std::string, at::Tensor>& tensors,
                              bool hf);

}  // namespace gemma

#endif  // GEMMA_MODEL_HF_MAPPING_GEMMA4_H_
