// Gemma 3 text decoder (HF Gemma3TextModel + tied LM head), LibTorch.
//
// Parameter names (registered exactly so, under the owner's "text." prefix):
//   embed.weight [V, H]; layers.{i}.input_norm / post_attn_norm / pre_mlp_norm
//   / post_mlp_norm .weight [H]; layers.{i}.attn.{qkv,o,q_norm,k_norm}.weight;
//   layers.{i}.mlp.{gate_up,down}.weight; final_norm.weight [H].
//
// Layer: h = x + post_attn_norm(attn(input_norm(x)));
//        y = h + post_mlp_norm(mlp(pre_mlp_norm(h))).
// Embedding: E[ids] * sqrt(H), the factor rounded to the weight dtype first.
#ifndef GEMMA_MODEL_GEMMA3_H_
#define GEMMA_MODEL_GEMMA3_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/layers.h"

namespace gemma {

class KvCache;

// One decoder layer.
class Gemma3DecoderLayerImpl : public torch::nn::Module {
 public:
  Gemma3DecoderLayerImpl(const TextConfig& config, LayerType type);

  // x [B, L, H]; cos/sin for this layer type; bias for this layer type.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin, const torch::Tensor& bias,
                        LayerKvCache* cache = nullptr);

  LayerType type;
  RMSNorm input_norm{nullptr};
  Attention attn{nullptr};
  RMSNorm post_attn_norm{nullptr};
  RMSNorm pre_mlp_norm{nullptr};
  GatedMlp mlp{nullptr};
  RMSNorm post_mlp_norm{nullptr};
};
TORCH_MODULE(Gemma3DecoderLayer);

// What a decoder forward needs besides the input embeddings.
struct DecoderInputs {
  // [B, past + L]: 1 for real tokens, 0 for padding, covering every token fed
  // so far (cached ones too). Undefined: no padding.
  torch::Tensor attention_mask;
  // [B or 1, L] rotary positions of the new tokens. Undefined: past + 0..L-1.
  torch::Tensor position_ids;
  // [B, L] image block ids of the new tokens (BlockIdsFromTokenTypes);
  // undefined for text-only input. Bidirectional attention inside each block.
  torch::Tensor block_ids;
  // Decoding cache (updated in place), or null for a full (training) forward.
  KvCache* cache = nullptr;
};

class Gemma3TextModelImpl : public torch::nn::Module {
 public:
  // apply_final_softcap: whether final_logit_softcapping (if set) is applied to
  // the logits: true for HF Gemma3ForCausalLM, false inside the VL model.
  explicit Gemma3TextModelImpl(const TextConfig& config,
                               bool apply_final_softcap = true);

  // E[ids] * sqrt(H) (factor cast to the weight dtype). ids [B, L] int64.
  torch::Tensor Embed(const torch::Tensor& input_ids);
  // Runs the layers and the final norm over `embeds` [B, L, H]: [B, L, H].
  torch::Tensor Decode(const torch::Tensor& embeds,
                       const DecoderInputs& inputs);
  // Tied LM head (+ final soft-capping when enabled): [B, L, V].
  torch::Tensor Logits(const torch::Tensor& hidden);
  // Embed + Decode + Logits.
  torch::Tensor forward(const torch::Tensor& input_ids,
                        const DecoderInputs& inputs);

  const TextConfig& config() const { return config_; }

  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm final_norm{nullptr};

 private:
  TextConfig config_;
  bool apply_final_softcap_;
  std::vector<Gemma3DecoderLayer> layer_list_;
  torch::Tensor inv_freq_full_;
  torch::Tensor inv_freq_sliding_;
};
TORCH_MODULE(Gemma3TextModel);

}  // namespace gemma

#endif  // GEMMA_MODEL_GEMMA3_H_
