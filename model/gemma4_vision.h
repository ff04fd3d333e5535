// Gemma 4 vision encoder (HF Gemma4VisionModel) and the multimodal embedder
// (HF Gemma4MultimodalEmbedder), transformers 5.17, LibTorch.
//
// Input (what the Gemma 4 image processor produces): pixel_values
// [N, P, C*ps*ps] in [0, 1] (patches, row-major inside a patch as the
// processor flattens them) and positions [N, P, 2] = (x, y) per patch,
// (-1, -1) for padding patches.
//
// Forward:
//   h = patch_embed(2 (px - 0.5)) + pos_table[0][x] + pos_table[1][y]
//       (position term 0 on padding patches);
//   layers (bidirectional, padding keys masked): Gemma 4 sandwich norms,
//     attention with q/k norms, scale-less v norm, scale 1.0 and axial 2-D
//     RoPE (first half of the head rotated by x, second by y; inverse
//     frequencies 1/theta^(2j/(hd/2)));
//   pool: padding rows zeroed, k = pooling_kernel_size, output length
//     P / k^2, cell = floor(x/k) + ((max x + 1) / k) floor(y/k), mean over a
//     cell in fp32, cells no patch reaches dropped, times sqrt(Hv);
//   standardize (if configured): (h - std_bias) * std_scale;
// giving the soft tokens of all images concatenated [sum_i n_i, Hv].
// The embedder maps them to the text space: proj(N0(h)) [.., H].
//
// Our names (prefix "vision."): patch_embed.weight [Hv, C ps^2],
// pos_table [2, Npos, Hv], layers.{j}.{input_norm, post_attn_norm,
// pre_mlp_norm, post_mlp_norm}.weight, layers.{j}.attn.{qkv, o, q_norm,
// k_norm}.weight (qkv fused per KV group as in the text model),
// layers.{j}.mlp.{gate_up, down}.weight, std_bias / std_scale [Hv] (buffers,
// standardize only). The embedder: "projector.proj.weight" [H, Hv].
#ifndef GEMMA_MODEL_GEMMA4_VISION_H_
#define GEMMA_MODEL_GEMMA4_VISION_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <vector>

#include "model/gemma4.h"
#include "model/gemma4_config.h"
#include "model/layers.h"

namespace gemma {

class Gemma4VisionLayerImpl : public torch::nn::Module {
 public:
  explicit Gemma4VisionLayerImpl(const Gemma4VisionConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin, const torch::Tensor& bias);

  Gemma4Norm input_norm{nullptr}, post_attn_norm{nullptr};
  Gemma4Norm pre_mlp_norm{nullptr}, post_mlp_norm{nullptr};
  Gemma4Attention attn{nullptr};
  GatedMlp mlp{nullptr};
};
TORCH_MODULE(Gemma4VisionLayer);

class Gemma4VisionTowerImpl : public torch::nn::Module {
 public:
  explicit Gemma4VisionTowerImpl(const Gemma4VisionConfig& c);

  // Soft tokens [sum of valid cells, Hv] (activation dtype) for pixel_values
  // [N, P, C ps^2] and positions [N, P, 2]; *tokens_per_image (optional) gets
  // each image's count. Throws c10::Error when P is not a multiple of k^2.
  torch::Tensor forward(const torch::Tensor& pixel_values,
                        const torch::Tensor& positions,
                        std::vector<int64_t>* tokens_per_image = nullptr);

  const Gemma4VisionConfig& config() const { return config_; }

  Projection patch_embed{nullptr};
  torch::Tensor pos_table;
  torch::nn::ModuleList layers{nullptr};
  torch::Tensor std_bias, std_scale;  // buffers (standardize only)

 private:
  Gemma4VisionConfig config_;
  std::vector<Gemma4VisionLayer> layer_list_;
  torch::Tensor inv_freq_;
};
TORCH_MODULE(Gemma4VisionTower);

// proj(N0(x)): [.., Hv] -> [.., H]. Parameter proj.weight [H, Hv].
class Gemma4EmbedderImpl : public torch::nn::Module {
 public:
  Gemma4EmbedderImpl(int64_t vision_hidden, int64_t text_hidden, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  double eps;
  Projection proj{nullptr};
};
TORCH_MODULE(Gemma4Embedder);

}  // namespace gemma

#endif  // GEMMA_MODEL_GEMMA4_VISION_H_
