// Where adapters go on one model family: the per-model description the
// adapter functions of model/lora.h take, so one implementation serves every
// model (Gemma 3 VL / text, Gemma 4 MoE VL / text) without knowing its type.
//
// A layout says, for a model's module tree (the root's named_modules()):
//   - which Projections (model/layers.h) are adapter targets, and under which
//     target name (PeftSpec.target_modules);
//   - for the HF PEFT export, which HF modules each targeted projection's rows
//     come from (fused q/k/v and gate/up are split back into their parts).
//
// Target names per family:
//   Gemma 3: "qkv", "o", "gate_up", "down" (text decoder) and "vision.qkv",
//            "vision.o", "vision.fc1", "vision.fc2" (SigLIP tower).
//   Gemma 4: "qkv" (also the fused "attn.qk" of K=V full-attention layers,
//            which have no V projection), "o", "gate_up", "down" (text
//            decoder: the DENSE MLP of each layer only; the MoE experts are
//            3-D parameters, not Projections, and are never adapted, nor is
//            the router) and "vision.qkv", "vision.o", "vision.gate_up",
//            "vision.down" (Gemma 4 vision tower). The vision patch embedder
//            and the multimodal projector are never targets.
//   Both default to the four text targets when target_modules is empty.
#ifndef GEMMA_MODEL_LORA_LAYOUT_H_
#define GEMMA_MODEL_LORA_LAYOUT_H_

#include <torch/nn/module.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/gemma4_config.h"
#include "model/hf_mapping.h"

namespace gemma {

struct AdapterLayout {
  std::string family;                        // "Gemma 3", "Gemma 4" (messages)
  std::vector<std::string> known_targets;    // every target name of the family
  std::vector<std::string> default_targets;  // for an empty target_modules
  bool has_vision = false;  // "vision.*" targets exist on this model
  // The target name of the Projection registered as `module` under the root
  // ("text.layers.0.attn.qkv" -> "qkv"), "" when it is no target.
  std::function<std::string(const std::string& module)> target_of;

  // ---- HF PEFT export ----
  // One entry per targetable projection: name = its module name under the
  // root, shape = its weight's global [out, in], pieces = the HF rows its
  // rows are, in order, with HfRows::hf_name the module path in transformers'
  // in-memory model (what peft's keys use), e.g.
  // "model.language_model.layers.0.self_attn.q_proj". Computed on demand.
  std::function<absl::StatusOr<std::vector<ParamMapping>>()> hf_projections;
  std::string hf_class;  // e.g. "Gemma4ForConditionalGeneration"
  std::string
      hf_parent_library;  // e.g. "transformers.models.gemma4.modeling_gemma4"
  // Whether adapter_config.json may list leaf names ("q_proj") when they pick
  // exactly the adapted modules among our projections. False where the HF
  // model has further modules of those leaf names that peft must not wrap
  // (Gemma 4 VL: the vision and audio towers' Gemma4ClippableLinear
  // "q_proj" wrappers around "q_proj.linear"); then a regex is written.
  bool leaf_target_names = true;
};

// The layout of a Gemma3Model (model/vl_model.h) of `config`.
AdapterLayout Gemma3AdapterLayout(const ModelConfig& config);

// The layout of a Gemma4Model (model/gemma4_model.h) of `config`, text-only
// (Gemma4ForCausalLM) or VL (Gemma4ForConditionalGeneration). The root's
// module names are "text.*" and "vision.*" in both cases.
AdapterLayout Gemma4AdapterLayout(const Gemma4ModelConfig& config);

// The layout of `model` when it is a Gemma3ModelImpl or a Gemma4ModelImpl
// (e.g. a trainer holding the model as a plain torch::nn::Module);
// INVALID_ARGUMENT naming the module's type otherwise.
absl::StatusOr<AdapterLayout> AdapterLayoutOf(const torch::nn::Module& model);

// Every target name any family knows (adapter checkpoints are read, and their
// spec checked, before the model is known).
std::vector<std::string> AllAdapterTargetNames();

}  // namespace gemma

#endif  // GEMMA_MODEL_LORA_LAYOUT_H_
