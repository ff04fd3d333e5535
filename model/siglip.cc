#include "model/siglip.h"

#include <torch/torch.h>

#include <cmath>

namespace gemma {

SiglipAttentionImpl::SiglipAttentionImpl(int64_t hidden_size, int64_t heads)
    : num_heads(heads) {
  qkv = register_module("qkv", Projection(hidden_size, 3 * hidden_size, true));
  o = register_module("o", Projection(hidden_size, hidden_size, true));
}

torch::Tensor SiglipAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t n = x.size(0), s = x.size(1), hv = x.size(2);
  const int64_t hd = hv / num_heads;
  // [N, S, 3, heads, hd] -> q, k, v [N, heads, S, hd]
  torch::Tensor fused = qkv(x).view({n, s, 3, num_heads, hd});
  torch::Tensor q = fused.select(2, 0).transpose(1, 2);
  torch::Tensor k = fused.select(2, 1).transpose(1, 2);
  torch::Tensor v = fused.select(2, 2).transpose(1, 2);
  const double scale = std::pow(double(hd), -0.5);
  torch::Tensor out;
  if (UseSdpa(q)) {
    out = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, false,
                                           scale);
  } else {
    torch::Tensor scores = torch::matmul(q, k.transpose(2, 3)) * scale;
    torch::Tensor probs =
        torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type());
    out = torch::matmul(probs, v);
  }
  return o(out.transpose(1, 2).reshape({n, s, hv}));
}

SiglipMlpImpl::SiglipMlpImpl(int64_t hidden_size, int64_t intermediate_size) {
  fc1 =
      register_module("fc1", Projection(hidden_size, intermediate_size, true));
  fc2 =
      register_module("fc2", Projection(intermediate_size, hidden_size, true));
}

torch::Tensor SiglipMlpImpl::forward(const torch::Tensor& x) {
  return fc2(torch::gelu(fc1(x), "tanh"));
}

namespace {
torch::nn::LayerNorm MakeLayerNorm(const VisionConfig& c) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size})
                                  .eps(c.layer_norm_eps)
                                  .elementwise_affine(true));
}
}  // namespace

SiglipEncoderLayerImpl::SiglipEncoderLayerImpl(const VisionConfig& c) {
  ln1 = register_module("ln1", MakeLayerNorm(c));
  attn = register_module("attn", SiglipAttention(c.hidden_size, c.num_heads));
  ln2 = register_module("ln2", MakeLayerNorm(c));
  mlp = register_module("mlp", SiglipMlp(c.hidden_size, c.intermediate_size));
}

torch::Tensor SiglipEncoderLayerImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x + attn(ln1(x));
  return h + mlp(ln2(h));
}

SiglipVisionTowerImpl::SiglipVisionTowerImpl(const VisionConfig& c)
    : config_(c) {
  patch_embed = register_module(
      "patch_embed",
      torch::nn::Conv2d(
          torch::nn::Conv2dOptions(c.num_channels, c.hidden_size, c.patch_size)
              .stride(c.patch_size)
              .bias(true)));
  pos_embed = register_module(
      "pos_embed", torch::nn::Embedding(c.num_patches(), c.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i) {
    SiglipEncoderLayer layer(c);
    layers->push_back(layer);
    layer_list_.push_back(layer);
  }
  post_norm = register_module("post_norm", MakeLayerNorm(c));
}

torch::Tensor SiglipVisionTowerImpl::forward(
    const torch::Tensor& pixel_values) {
  torch::Tensor x =
      patch_embed(pixel_values.to(patch_embed->weight.scalar_type()));
  x = x.flatten(2).transpose(1, 2);  // [N, Np, Hv]
  x = x + pos_embed->weight.unsqueeze(0);
  for (auto& layer : layer_list_) x = layer->forward(x);
  return post_norm(x);
}

}  // namespace gemma
