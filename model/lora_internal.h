// Helpers shared by model/lora.cc and model/peft_export.cc (not a public API).
#ifndef GEMMA_MODEL_LORA_INTERNAL_H_
#define GEMMA_MODEL_LORA_INTERNAL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/lora.h"

namespace gemma {

// A projection adapters can target: its module name ("text.layers.0.attn.qkv")
// and target name ("qkv", "vision.fc1", ...; see model/lora_layout.h).
struct TargetProjection {
  std::string name;
  std::string target;
  std::shared_ptr<ProjectionImpl> proj;
};

// Every projection of `model` that `layout` names a target, in
// named_modules() order.
std::vector<TargetProjection> FindProjections(torch::nn::Module& model,
                                              const AdapterLayout& layout);

// The LoRA/DoRA adapter attached to `proj`, or null.
std::shared_ptr<LoraAdapter> AdapterOf(const ProjectionImpl& proj);

// The whole (TP = 1) shape [out, in] of `proj`'s weight: its own shape
// unless it is a tensor-parallel shard.
std::vector<int64_t> WholeShape(const ProjectionImpl& proj);

// An adapter's whole (TP = 1) tensors, on the CPU in fp32; m only for DoRA.
struct WholeAdapter {
  torch::Tensor a, b, m;
};
// Collective over `proj`'s TP group when it is split (every rank calls it for
// the same projections in the same order): gathers the shards.
WholeAdapter GatherAdapter(const ProjectionImpl& proj,
                           const LoraAdapter& adapter);

// Renames folder `tmp` to `dir`, replacing an existing `dir`.
absl::Status ReplaceDir(const std::string& tmp, const std::string& dir);

absl::Status WriteTextFile(const std::string& path, const std::string& text);

}  // namespace gemma

#endif  // GEMMA_MODEL_LORA_INTERNAL_H_
