// SigLIP vision tower as used by Gemma 3 (HF SiglipVisionModel without the
// pooling head), LibTorch.
//
// Parameter names (under the owner's "vision." prefix):
//   patch_embed.weight [Hv, C, P, P] / .bias [Hv]   conv, stride P
//   pos_embed.weight [Np, Hv]                       learned positions
//   layers.{i}.ln1 / ln2 .weight / .bias [Hv]      LayerNorm (pre-LN)
//   layers.{i}.attn.qkv.weight [3 Hv, Hv] / .bias  fused [q; k; v]
//   layers.{i}.attn.o.weight [Hv, Hv] / .bias
//   layers.{i}.mlp.fc1 [Iv, Hv], mlp.fc2 [Hv, Iv] (+ biases), gelu_tanh between
//   post_norm.weight / .bias [Hv]
// Vision weights are replicated under tensor parallelism.
#ifndef GEMMA_MODEL_SIGLIP_H_
#define GEMMA_MODEL_SIGLIP_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <vector>

#include "model/config.h"
#include "model/layers.h"

namespace gemma {

// Bidirectional multi-head self-attention, scale head_dim^-0.5, fp32 softmax.
class SiglipAttentionImpl : public torch::nn::Module {
 public:
  SiglipAttentionImpl(int64_t hidden_size, int64_t num_heads);
  torch::Tensor forward(const torch::Tensor& x);  // [N, S, Hv] -> [N, S, Hv]

  int64_t num_heads;
  Projection qkv{nullptr};
  Projection o{nullptr};
};
TORCH_MODULE(SiglipAttention);

class SiglipMlpImpl : public torch::nn::Module {
 public:
  SiglipMlpImpl(int64_t hidden_size, int64_t intermediate_size);
  torch::Tensor forward(const torch::Tensor& x);

  Projection fc1{nullptr};
  Projection fc2{nullptr};
};
TORCH_MODULE(SiglipMlp);

// x + attn(ln1(x)); then + mlp(ln2(.)).
class SiglipEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit SiglipEncoderLayerImpl(const VisionConfig& config);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::LayerNorm ln1{nullptr};
  SiglipAttention attn{nullptr};
  torch::nn::LayerNorm ln2{nullptr};
  SiglipMlp mlp{nullptr};
};
TORCH_MODULE(SiglipEncoderLayer);

class SiglipVisionTowerImpl : public torch::nn::Module {
 public:
  explicit SiglipVisionTowerImpl(const VisionConfig& config);

  // pixel_values [N, C, S, S] (S = image_size, normalised to [-1, 1]) ->
  // last hidden state after post_norm [N, Np, Hv] (patches row-major).
  torch::Tensor forward(const torch::Tensor& pixel_values);

  const VisionConfig& config() const { return config_; }

  torch::nn::Conv2d patch_embed{nullptr};
  torch::nn::Embedding pos_embed{nullptr};
  torch::nn::ModuleList layers{nullptr};
  torch::nn::LayerNorm post_norm{nullptr};

 private:
  VisionConfig config_;
  std::vector<SiglipEncoderLayer> layer_list_;
};
TORCH_MODULE(SiglipVisionTower);

}  // namespace gemma

#endif  // GEMMA_MODEL_SIGLIP_H_
