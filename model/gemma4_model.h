// The whole Gemma 4 model: text MoE decoder, and for VL configs the vision
// tower and the multimodal embedder (HF Gemma4ForConditionalGeneration; for
// text-only configs Gemma4ForCausalLM), transformers 5.17.
//
// VL forward: image_token_id positions are looked up as pad_token_id, then
// the images' soft tokens (vision tower -> embedder, NOT scaled by sqrt(H))
// replace them in order (batch-major, then sequence order); the image-token
// runs are the image blocks: with use_bidirectional_attention "vision" their
// tokens see each other on sliding layers only (full layers stay causal);
// logits through the tied head with final soft-capping.
//
// Names: "text.*" (model/gemma4.h), "vision.*" (model/gemma4_vision.h),
// "projector.proj.weight" [H, Hv]. HF names of the vision side:
//   model.vision_tower.patch_embedder.input_proj.weight
//   vision.patch_embed.weight
//   model.vision_tower.patch_embedder.position_embedding_table vision.pos_table
//   model.vision_tower.encoder.layers.{j}.self_attn.{q,k,v}_proj.linear.weight
//                                       -> vision.layers.{j}.attn.qkv.weight
//   ...self_attn.o_proj.linear.weight, q_norm/k_norm.weight, mlp.{gate,up,
//   down}_proj.linear.weight, {input,post_attention,pre_feedforward,
//   post_feedforward}_layernorm.weight, model.vision_tower.std_{bias,scale},
//   model.embed_vision.embedding_projection.weight -> projector.proj.weight.
#ifndef GEMMA_MODEL_GEMMA4_MODEL_H_
#define GEMMA_MODEL_GEMMA4_MODEL_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/comm.h"
#include "model/gemma4.h"
#include "model/gemma4_config.h"
#include "model/gemma4_names.h"
#include "model/gemma4_vision.h"
#include "model/generate.h"
#include "model/hf_mapping.h"

namespace gemma {

struct Gemma4Inputs {
  torch::Tensor input_ids;        // [B, L] int64
  torch::Tensor pixel_values;     // [N, P, C ps^2]; VL prefill only
  torch::Tensor image_positions;  // [N, P, 2] (x, y), (-1, -1) = padding
  torch::Tensor attention_mask;   // [B, past + L]; optional
  torch::Tensor position_ids;     // [B or 1, L]; optional
};

class Gemma4ModelImpl : public torch::nn::Module {
 public:
  // ep / tp: model/gemma4.h (the vision tower and embedder are replicated
  // over TP).
  explicit Gemma4ModelImpl(const Gemma4ModelConfig& config,
                           std::shared_ptr<Comm> ep = nullptr,
                           TpOptions tp = {});

  // Input embeddings with the image soft tokens merged in: [B, L, H]. Throws
  // c10::Error when the image-token count differs from the soft tokens.
  torch::Tensor Embeddings(const Gemma4Inputs& inputs);
  // Logits [B, L, V].
  torch::Tensor forward(const Gemma4Inputs& inputs, KvCache* cache = nullptr);
  absl::StatusOr<torch::Tensor> Forward(const Gemma4Inputs& inputs,
                                        KvCache* cache = nullptr);

  const Gemma4ModelConfig& config() const { return config_; }

  Gemma4TextModel text{nullptr};
  Gemma4VisionTower vision{nullptr};  // null for text-only models
  Gemma4Embedder projector{nullptr};  // null for text-only models

 private:
  Gemma4ModelConfig config_;
};
TORCH_MODULE(Gemma4Model);

// BuildGemma4VisionMapping: model/gemma4_names.h.

// HF tensors of a whole checkpoint -> ours (text, and vision when `config`
// is VL). Errors name `source` and the tensor.
absl::StatusOr<std::map<std::string, at::Tensor>> Gemma4ModelFromHf(
    const std::map<std::string, at::Tensor>& hf,
    const Gemma4ModelConfig& config, const std::string& source);

// Ours -> HF, every tensor of the checkpoint: text under
// "model.language_model." for VL configs ("model." for text-only), the
// vision tower and embedder under their HF names. Bit-exact inverse of
// Gemma4ModelFromHf.
absl::StatusOr<std::map<std::string, at::Tensor>> Gemma4ModelToHf(
    const std::map<std::string, at::Tensor>& ours,
    const Gemma4ModelConfig& config, const std::string& source);

// Builds the model and copies `weights` (our names) into its parameters and
// buffers; InvalidArgument listing missing / unexpected / mis-shaped names.
// Under TP the TP-split tensors must be this rank's shards
// (LoadGemma4RankWeights gives them); experts may be global or this EP
// rank's slice.
absl::StatusOr<Gemma4Model> BuildGemma4Model(
    const Gemma4ModelConfig& config,
    const std::map<std::string, at::Tensor>& weights,
    std::shared_ptr<Comm> ep = nullptr, TpOptions tp = {});

// Reads an HF Gemma 4 folder (config.json + *.safetensors; text-only or VL)
// and builds the model (fp32 or the stored dtype converted to fp32).
absl::StatusOr<Gemma4Model> LoadGemma4Model(const std::string& dir,
                                            std::shared_ptr<Comm> ep = nullptr);

// KV-cached decoding (model/generate.h semantics: positions from the
// attention mask so left-padded rows decode like unpadded ones; images and
// their blocks in the prefill only; greedy or sampled; stop tokens) on a
// Gemma 4 model; options.cuda_graphs / static_cache are not used (growing
// cache). prompt.position_ids must be empty.
absl::StatusOr<GenerateResult> GenerateGemma4(Gemma4Model& model,
                                              const Gemma4Inputs& prompt,
                                              const GenerateOptions& options);

}  // namespace gemma

#endif  // GEMMA_MODEL_GEMMA4_MODEL_H_
