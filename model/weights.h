// Opening a model folder, whatever it holds, as our modules want it: the HF
// config text and every weight under our names (MODEL_NAMES: text.*, vision.*,
// projector.*) at TP=1. Three kinds of folder are understood:
//   - our sharded checkpoint (manifest.json + rank-NNNNN.safetensors, any TP):
//     the global tensors are assembled from the rank files;
//   - a Hugging Face folder (config.json + model.safetensors, or shards with
//     model.safetensors.index.json; any key layout model/hf_mapping.h reads):
//     q/k/v and gate/up are fused on the way (model/hf_mapping.h);
//   - a folder of safetensors already in our names (config.json + *.safetensors
//     whose keys start with text.).
// Tensors keep their stored dtype (bf16, fp16, fp32) and live on the CPU.
#ifndef GEMMA_MODEL_WEIGHTS_H_
#define GEMMA_MODEL_WEIGHTS_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "model/param_table.h"
#include "model/vl_model.h"

namespace gemma {

struct ModelWeights {
  std::string config_json;  // the HF config.json text
  std::string kind;         // "checkpoint", "hf" or "ours"
  std::map<std::string, at::Tensor> tensors;
};

// Errors name the folder and the file or tensor at fault (NOT_FOUND when the
// folder holds none of the three kinds).
//
// With tp > 1 each tensor is rank `rank`'s shard of a tp-way layout
// (model/param_table.h's split rules, the shapes Gemma3Model(config, tp)
// has): from our checkpoint (any stored TP) and from HF folders only the
// bytes of that shard are read out of the mapped files; our-name safetensors
// are loaded whole and sliced.
absl::StatusOr<ModelWeights> LoadModelWeights(const std::string& dir,
                                              int tp = 1, int rank = 0);

// Rank `rank`'s shard of global tensor `name` (our name) for a tp-way layout,
// as a new CPU tensor. NOT_FOUND for names outside model/param_table.h;
// InvalidArgument when it cannot be split tp ways.
absl::StatusOr<at::Tensor> SliceShard(const std::string& name,
                                      const at::Tensor& global,
                                      const ShardDims& dims, int tp, int rank);

// LoadModelWeights + the config parsed + BuildGemma3Model (fp32 weights).
absl::StatusOr<Gemma3Model> LoadModel(const std::string& dir);

}  // namespace gemma

#endif  // GEMMA_MODEL_WEIGHTS_H_
