// Gemma 4 parameter names: ours (model/gemma4.h, model/gemma4_model.h) and
// their Hugging Face pieces, without LibTorch (the sharded checkpoint and the
// conversions use it; model/hf_mapping_gemma4.h adds the tensor-level
// conversions). The one place, with model/hf_mapping_gemma4.cc, that spells
// Gemma 4 HF names.
//
// HF checkpoints (transformers 5.17 save_pretrained):
//   Gemma4ForCausalLM                text under "model."
//   Gemma4ForConditionalGeneration   text under "model.language_model.",
//                                    vision under "model.vision_tower.",
//                                    projector "model.embed_vision...."
// "lm_head.weight" (tied) is not written; import drops it.
#ifndef GEMMA_MODEL_GEMMA4_NAMES_H_
#define GEMMA_MODEL_GEMMA4_NAMES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/gemma4_config.h"
#include "model/hf_mapping.h"  // ParamMapping, HfRows, HfMapping
#include "model/param_table.h"  // ShardDims

namespace gemma {

// The text mapping for `config`: our names ("text.…") with their global
// shapes and the HF pieces (HF names without prefix, e.g.
// "layers.3.self_attn.q_proj.weight").
std::vector<ParamMapping> BuildGemma4Mapping(const Gemma4TextConfig& config);

// Our vision + projector names and their HF pieces (full HF names).
std::vector<ParamMapping> BuildGemma4VisionMapping(const Gemma4VisionConfig& v,
                                                   int64_t text_hidden);

// The prefix of the text tensors in an HF checkpoint of `config`:
// "model.language_model." (VL) or "model." (text-only).
std::string Gemma4HfTextPrefix(const Gemma4ModelConfig& config);

// The whole model's mapping with full HF names, as transformers 5.17 writes
// them for `config` (text-only or VL), and every HF tensor with its shape
// (HfMapping::hf_tensors, in a stable order).
HfMapping BuildGemma4HfMapping(const Gemma4ModelConfig& config);

// An HF key of a Gemma 4 checkpoint in the spelling BuildGemma4HfMapping
// uses: the text prefixes "model.", "model.language_model." and
// "language_model.model." are all accepted; "" for the tied lm_head.
// NOT_FOUND for a key that is no part of `config`'s model (e.g. vision keys
// with a text-only config, audio tower keys).
absl::StatusOr<std::string> CanonicalGemma4HfName(
    const std::string& key, const Gemma4ModelConfig& config);

// How `config`'s fused attention weights split over TP (param_table.h
// ComputeShard): num_heads, and per layer the KV heads of its type (sliding:
// num_key_value_heads, full: num_global_key_value_heads); num_kv_heads is the
// sliding count.
ShardDims Gemma4ShardDims(const Gemma4TextConfig& config);

}  // namespace gemma

#endif  // GEMMA_MODEL_GEMMA4_NAMES_H_
