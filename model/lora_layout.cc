#include "model/lora_layout.h"

#include <set>
#include <typeinfo>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/gemma4_model.h"
#include "model/hf_mapping_gemma4.h"
#include "model/vl_model.h"

namespace gemma {
namespace {

const std::vector<std::string> kTextTargets = {"qkv", "o", "gate_up", "down"};
const std::vector<std::string> kGemma3Targets = {
    "qkv",        "o",        "gate_up",    "down",
    "vision.qkv", "vision.o", "vision.fc1", "vision.fc2"};
const std::vector<std::string> kGemma4Targets = {
    "qkv",        "o",        "gate_up",        "down",
    "vision.qkv", "vision.o", "vision.gate_up", "vision.down"};

HfConfigLite LiteConfig(const ModelConfig& c) {
  HfConfigLite l;
  l.vision = c.is_vl();
  l.vocab_size = c.text.vocab_size;
  l.hidden_size = c.text.hidden_size;
  l.intermediate_size = c.text.intermediate_size;
  l.num_layers = c.text.num_layers;
  l.num_heads = c.text.num_heads;
  l.num_kv_heads = c.text.num_kv_heads;
  l.head_dim = c.text.head_dim;
  l.tie_word_embeddings = c.text.tie_word_embeddings;
  if (c.vision) {
    l.vision_hidden = c.vision->hidden_size;
    l.vision_intermediate = c.vision->intermediate_size;
    l.vision_layers = c.vision->num_layers;
    l.image_size = c.vision->image_size;
    l.patch_size = c.vision->patch_size;
    l.num_channels = c.vision->num_channels;
  }
  return l;
}

// Module name ("text.layers.0.attn.qkv") -> target name, or "".
std::string Gemma3TargetOf(const std::string& name) {
  const bool text = absl::StartsWith(name, "text.layers.");
  const bool vision = absl::StartsWith(name, "vision.layers.");
  if (!text && !vision) return "";
  std::string target;
  if (absl::EndsWith(name, ".attn.qkv")) {
    target = "qkv";
  } else if (absl::EndsWith(name, ".attn.o")) {
    target = "o";
  } else if (text && absl::EndsWith(name, ".mlp.gate_up")) {
    target = "gate_up";
  } else if (text && absl::EndsWith(name, ".mlp.down")) {
    target = "down";
  } else if (vision && absl::EndsWith(name, ".mlp.fc1")) {
    target = "fc1";
  } else if (vision && absl::EndsWith(name, ".mlp.fc2")) {
    target = "fc2";
  } else {
    return "";
  }
  return vision ? "vision." + target : target;
}

// Text and vision alike: attention qkv (qk on K=V layers), o and the dense
// gated MLP. The MoE block (moe.router.proj, moe.experts) is no target.
std::string Gemma4TargetOf(const std::string& name) {
  const bool text = absl::StartsWith(name, "text.layers.");
  const bool vision = absl::StartsWith(name, "vision.layers.");
  if (!text && !vision) return "";
  std::string target;
  if (absl::EndsWith(name, ".attn.qkv") || absl::EndsWith(name, ".attn.qk")) {
    target = "qkv";
  } else if (absl::EndsWith(name, ".attn.o")) {
    target = "o";
  } else if (absl::EndsWith(name, ".mlp.gate_up")) {
    target = "gate_up";
  } else if (absl::EndsWith(name, ".mlp.down")) {
    target = "down";
  } else {
    return "";
  }
  return vision ? "vision." + target : target;
}

// The targetable entries of `mapping` (weights only), their pieces' HF
// parameter names turned into module paths by `module_of`.
absl::StatusOr<std::vector<ParamMapping>> TargetProjections(
    const std::vector<ParamMapping>& mapping,
    const std::function<std::string(const std::string&)>& target_of,
    const std::function<absl::StatusOr<std::string>(const std::string&)>&
        module_of) {
  std::vector<ParamMapping> out;
  for (const ParamMapping& p : mapping) {
    if (!absl::EndsWith(p.name, ".weight")) continue;
    ParamMapping m;
    m.name = p.name.substr(0, p.name.size() - 7);
    if (target_of(m.name).empty()) continue;
    m.shape = p.shape;
    for (const HfRows& r : p.pieces) {
      GEMMA_ASSIGN_OR_RETURN(std::string module, module_of(r.hf_name));
      m.pieces.push_back({std::move(module), r.row_begin, r.row_end});
    }
    out.push_back(std::move(m));
  }
  return out;
}

absl::StatusOr<std::string> StripWeight(const std::string& hf_name) {
  if (!absl::EndsWith(hf_name, ".weight")) {
    return absl::InternalError(
        absl::StrCat("HF parameter '", hf_name, "' is no .weight"));
  }
  return hf_name.substr(0, hf_name.size() - 7);
}

}  // namespace

AdapterLayout Gemma3AdapterLayout(const ModelConfig& config) {
  AdapterLayout l;
  l.family = "Gemma 3";
  l.known_targets = kGemma3Targets;
  l.default_targets = kTextTargets;
  l.has_vision = config.is_vl();
  l.target_of = Gemma3TargetOf;
  const bool vision = config.is_vl();
  l.hf_projections = [config,
                      vision]() -> absl::StatusOr<std::vector<ParamMapping>> {
    GEMMA_ASSIGN_OR_RETURN(HfMapping mapping,
                           BuildHfMapping(LiteConfig(config)));
    return TargetProjections(
        mapping.params, Gemma3TargetOf,
        [vision](const std::string& hf) { return HfModulePath(hf, vision); });
  };
  l.hf_class = vision ? "Gemma3ForConditionalGeneration" : "Gemma3ForCausalLM";
  l.hf_parent_library = "transformers.models.gemma3.modeling_gemma3";
  l.leaf_target_names = true;
  return l;
}

AdapterLayout Gemma4AdapterLayout(const Gemma4ModelConfig& config) {
  AdapterLayout l;
  l.family = "Gemma 4";
  l.known_targets = kGemma4Targets;
  l.default_targets = kTextTargets;
  l.has_vision = config.is_vl();
  l.target_of = Gemma4TargetOf;
  l.hf_projections = [config]() -> absl::StatusOr<std::vector<ParamMapping>> {
    // Text pieces are named without prefix ("layers.0.self_attn.q_proj.
    // weight"); vision pieces carry their full HF name.
    const std::string text_prefix =
        config.is_vl() ? "model.language_model." : "model.";
    GEMMA_ASSIGN_OR_RETURN(
        std::vector<ParamMapping> out,
        TargetProjections(BuildGemma4Mapping(config.text), Gemma4TargetOf,
                          [&](const std::string& hf) {
                            return StripWeight(text_prefix + hf);
                          }));
    if (config.vision) {
      GEMMA_ASSIGN_OR_RETURN(
          std::vector<ParamMapping> vision,
          TargetProjections(
              BuildGemma4VisionMapping(*config.vision, config.text.hidden_size),
              Gemma4TargetOf, StripWeight));
      for (auto& p : vision) out.push_back(std::move(p));
    }
    return out;
  };
  l.hf_class =
      config.is_vl() ? "Gemma4ForConditionalGeneration" : "Gemma4ForCausalLM";
  l.hf_parent_library = "transformers.models.gemma4.modeling_gemma4";
  // VL: the vision (and audio) towers' q_proj/o_proj/... are
  // Gemma4ClippableLinear wrappers peft cannot wrap; only a regex is exact.
  l.leaf_target_names = !config.is_vl();
  return l;
}

absl::StatusOr<AdapterLayout> AdapterLayoutOf(const torch::nn::Module& model) {
  if (auto* g3 = dynamic_cast<const Gemma3ModelImpl*>(&model)) {
    return Gemma3AdapterLayout(g3->config());
  }
  if (auto* g4 = dynamic_cast<const Gemma4ModelImpl*>(&model)) {
    return Gemma4AdapterLayout(g4->config());
  }
  return absl::InvalidArgumentError(
      absl::StrCat("adapters: module '", model.name(),
                   "' is neither a Gemma3Model nor a Gemma4Model"));
}

std::vector<std::string> AllAdapterTargetNames() {
  std::set<std::string> all(kGemma3Targets.begin(), kGemma3Targets.end());
  all.insert(kGemma4Targets.begin(), kGemma4Targets.end());
  return {all.begin(), all.end()};
}

}  // namespace gemma
