// The whole Gemma 3 model: text decoder, and for VL configs the SigLIP tower
// and the multimodal projector (HF Gemma3ForConditionalGeneration; for
// text-only configs HF Gemma3ForCausalLM).
//
// Parameter names are ours (/work/briefs/MODEL_NAMES.md): "text.*",
// "vision.*", "projector.norm.weight" [Hv], "projector.proj.weight" [Hv, H]
// (applied as x @ W). LoadParameters copies a name -> tensor map into them.
//
// VL forward: text embeddings (image token ids >= vocab looked up as 0), then
// each image's mm_tokens_per_image projected vectors replace the embeddings at
// the image-token positions in order (batch-major, then sequence order; not
// scaled by sqrt(H)); tokens of one image attend to each other both ways
// (token_type_ids, prefill only); logits through the tied LM head.
#ifndef GEMMA_MODEL_VL_MODEL_H_
#define GEMMA_MODEL_VL_MODEL_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/gemma3.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/siglip.h"

namespace gemma {

// A module holding one parameter "weight" (for "projector.proj.weight").
class WeightImpl : public torch::nn::Module {
 public:
  WeightImpl(int64_t rows, int64_t cols);
  torch::Tensor weight;
};
TORCH_MODULE(Weight);

// avg-pool the patch grid to mm_tokens_per_image, RMSNorm (1 + w, eps of the
// vision config), then x @ proj.weight.
class MultiModalProjectorImpl : public torch::nn::Module {
 public:
  MultiModalProjectorImpl(const VisionConfig& vision, int64_t text_hidden,
                          int64_t mm_tokens_per_image);
  // [N, Np, Hv] -> [N, mm_tokens_per_image, H]
  torch::Tensor forward(const torch::Tensor& vision_out);

  RMSNorm norm{nullptr};
  Weight proj{nullptr};

 private:
  int64_t patches_per_side_;
  int64_t kernel_;
};
TORCH_MODULE(MultiModalProjector);

// Inputs of one forward. Shapes: B batch, L new tokens.
struct ModelInputs {
  torch::Tensor input_ids;     // [B, L] int64 (required)
  torch::Tensor pixel_values;  // [N_img, C, S, S] float; VL prefill only
  torch::Tensor
      token_type_ids;  // [B, L], 1 = image token: enables the image blocks
  torch::Tensor attention_mask;  // [B, past + L], 1 = real token; optional
  torch::Tensor position_ids;  // [B or 1, L]; optional (default past + arange)
};

class Gemma3ModelImpl : public torch::nn::Module {
 public:
  // tp: the text decoder's tensor-parallel shard (gemma3.h); the vision
  // tower and projector are replicated on every rank of the group.
  explicit Gemma3ModelImpl(const ModelConfig& config, TpOptions tp = {});

  // Logits [B, L, V] (the activation dtype). With `cache`, decodes on top of
  // what it holds and appends the new keys/values. Throws c10::Error on bad
  // shapes or an image-token count that does not match the images; use
  // Forward() for a Status.
  torch::Tensor forward(const ModelInputs& inputs, KvCache* cache = nullptr);
  absl::StatusOr<torch::Tensor> Forward(const ModelInputs& inputs,
                                        KvCache* cache = nullptr);

  // Projected image features [N_img, mm_tokens_per_image, H].
  torch::Tensor ImageFeatures(const torch::Tensor& pixel_values);
  // Input embeddings with the image features merged in: [B, L, H].
  torch::Tensor Embeddings(const ModelInputs& inputs);

  // An empty cache shaped for this model.
  KvCache NewCache() const { return KvCache(config_.text); }
  const ModelConfig& config() const { return config_; }

  Gemma3TextModel text{nullptr};
  SiglipVisionTower vision{nullptr};       // null for text-only models
  MultiModalProjector projector{nullptr};  // null for text-only models

 private:
  ModelConfig config_;
};
TORCH_MODULE(Gemma3Model);

// Copies `weights` (our names) into `module`'s parameters (names as
// named_parameters() gives them, each prefixed with `prefix`), converting
// dtype and device to the parameter's. Errors (InvalidArgument) list missing
// names, names in `weights` under `prefix` that the module does not have, and
// shape mismatches (name, got, expected). Nothing is copied unless all match.
absl::Status LoadParameters(torch::nn::Module& module,
                            const std::map<std::string, torch::Tensor>& weights,
                            const std::string& prefix = "");

// Builds the model for `config` and loads `weights` into it (fp32 parameters;
// call ->to(dtype/device) afterwards as needed). Under TP, `weights` are this
// rank's shards (LoadModelWeights(dir, tp, rank)). InvalidArgument when the
// config cannot be split tp ways or the weights do not fit.
absl::StatusOr<Gemma3Model> BuildGemma3Model(
    const ModelConfig& config,
    const std::map<std::string, torch::Tensor>& weights, TpOptions tp = {});

}  // namespace gemma

#endif  // GEMMA_MODEL_VL_MODEL_H_
