#include "model/gemma4_vision.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace gemma {

Gemma4VisionLayerImpl::Gemma4VisionLayerImpl(const Gemma4VisionConfig& c) {
  const int64_t h = c.hidden_size;
  const double eps = c.rms_norm_eps;
  input_norm = register_module("input_norm", Gemma4Norm(h, eps));
  attn = register_module(
      "attn", Gemma4Attention(h, c.num_heads, c.num_kv_heads, c.head_dim,
                              /*k_eq_v=*/false, eps, /*axial_2d=*/true));
  post_attn_norm = register_module("post_attn_norm", Gemma4Norm(h, eps));
  pre_mlp_norm = register_module("pre_mlp_norm", Gemma4Norm(h, eps));
  mlp =
      register_module("mlp", GatedMlp(GatedMlpOptions(h, c.intermediate_size)));
  post_mlp_norm = register_module("post_mlp_norm", Gemma4Norm(h, eps));
}

torch::Tensor Gemma4VisionLayerImpl::forward(const torch::Tensor& x,
                                             const torch::Tensor& cos,
                                             const torch::Tensor& sin,
                                             const torch::Tensor& bias) {
  torch::Tensor h = x + post_attn_norm(attn(input_norm(x), cos, sin, bias));
  return h + post_mlp_norm(mlp(pre_mlp_norm(h)));
}

Gemma4VisionTowerImpl::Gemma4VisionTowerImpl(const Gemma4VisionConfig& c)
    : config_(c) {
  patch_embed = register_module(
      "patch_embed", Projection(c.patch_dim(), c.hidden_size, false));
  pos_table = register_parameter(
      "pos_table", torch::ones({2, c.position_embedding_size, c.hidden_size}));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i) {
    Gemma4VisionLayer layer(c);
    layers->push_back(layer);
    layer_list_.push_back(layer);
  }
  if (c.standardize) {
    std_bias = register_buffer("std_bias", torch::zeros({c.hidden_size}));
    std_scale = register_buffer("std_scale", torch::ones({c.hidden_size}));
  }
  const int64_t spatial = c.head_dim / 2;
  inv_freq_ =
      torch::pow(c.rope_theta, torch::arange(0, spatial, 2, torch::kFloat) /
                                   static_cast<float>(spatial))
          .reciprocal();
}

torch::Tensor Gemma4VisionTowerImpl::forward(const torch::Tensor& pixel_values,
                                             const torch::Tensor& positions,
                                             std::vector<int64_t>* counts) {
  const auto& c = config_;
  TORCH_CHECK(pixel_values.dim() == 3 && pixel_values.size(2) == c.patch_dim(),
              "Gemma 4 vision: pixel_values must be [N, P, ", c.patch_dim(),
              "], got ", pixel_values.sizes());
  TORCH_CHECK(positions.dim() == 3 && positions.size(2) == 2 &&
                  positions.size(0) == pixel_values.size(0) &&
                  positions.size(1) == pixel_values.size(1),
              "Gemma 4 vision: positions must be [N, P, 2], got ",
              positions.sizes());
  const int64_t n = pixel_values.size(0), p = pixel_values.size(1);
  const int64_t kk = c.pooling_kernel_size * c.pooling_kernel_size;
  const int64_t out_len = p / kk;
  TORCH_CHECK(
      out_len > 0 && out_len * kk == p, "Gemma 4 vision: ", p,
      " patches per image is not a multiple of pooling_kernel_size^2 = ", kk);
  const auto dtype = patch_embed->weight.scalar_type();
  torch::Tensor pos = positions.to(torch::kLong);
  torch::Tensor pad = pos.eq(-1).all(-1);  // [N, P]
  torch::Tensor clamped = pos.clamp_min(0);

  // Patch embedding + 2-D position table.
  torch::Tensor h = patch_embed((2 * (pixel_values - 0.5)).to(dtype));
  torch::Tensor pe =
      pos_table[0].index_select(0, clamped.select(2, 0).reshape(-1)) +
      pos_table[1].index_select(0, clamped.select(2, 1).reshape(-1));
  pe = pe.view({n, p, c.hidden_size});
  h = h + torch::where(pad.unsqueeze(-1), torch::zeros({}, pe.options()), pe);

  // Axial rotary tables [N, P, hd]: (x, x, y, y) blocks of hd/4. inv_freq_
  // is a plain member (fp32, on the CPU): module.to() does not move it.
  torch::Tensor freqs = pos.to(torch::kFloat).unsqueeze(-1) *
                        inv_freq_.to(pos.device());  // [N,P,2,hd/4]
  torch::Tensor fx = freqs.select(2, 0), fy = freqs.select(2, 1);
  torch::Tensor emb = torch::cat({fx, fx, fy, fy}, -1);
  torch::Tensor cos = emb.cos().to(dtype), sin = emb.sin().to(dtype);

  // Bidirectional; padding keys get the lowest finite value (HF eager).
  torch::Tensor bias =
      torch::zeros({n, 1, 1, p},
                   torch::TensorOptions().dtype(dtype).device(h.device()))
          .masked_fill(pad.view({n, 1, 1, p}),
                       dtype == torch::kFloat
                           ? at::Scalar(std::numeric_limits<float>::lowest())
                           : at::Scalar(-1e30));
  for (auto& layer : layer_list_) h = layer->forward(h, cos, sin, bias);

  // Pooling by positions.
  h = h.masked_fill(pad.unsqueeze(-1), 0.0);
  torch::Tensor mask;
  if (out_len != p) {
    const int64_t k =
        static_cast<int64_t>(std::sqrt(static_cast<double>(p / out_len)));
    torch::Tensor max_x = std::get<0>(clamped.select(2, 0).max(-1, true)) + 1;
    torch::Tensor cell = torch::div(clamped, k, "floor");
    torch::Tensor idx =
        cell.select(2, 0) + torch::div(max_x, k, "floor") * cell.select(2, 1);
    torch::Tensor w = torch::one_hot(idx, out_len).to(torch::kFloat) /
                      static_cast<float>(k * k);  // [N, P, out]
    h = torch::matmul(w.transpose(1, 2), h.to(torch::kFloat))
            .to(h.scalar_type());
    mask = w.ne(0).any(1);  // [N, out]
  } else {
    mask = pad.logical_not();
  }
  h = h.to(torch::kFloat) * std::sqrt(static_cast<double>(c.hidden_size));
  if (counts != nullptr) {
    torch::Tensor per = mask.sum(1).to(torch::kLong).cpu();
    counts->assign(per.data_ptr<int64_t>(), per.data_ptr<int64_t>() + n);
  }
  h = h.index({mask});  // [sum valid, Hv]
  if (c.standardize) {
    h = (h - std_bias.to(torch::kFloat)) * std_scale.to(torch::kFloat);
  }
  return h.to(dtype);
}

Gemma4EmbedderImpl::Gemma4EmbedderImpl(int64_t vh, int64_t th, double eps_in)
    : eps(eps_in) {
  proj = register_module("proj", Projection(vh, th, false));
}

torch::Tensor Gemma4EmbedderImpl::forward(const torch::Tensor& x) {
  return proj(Gemma4RmsNorm(x, torch::Tensor(), eps));
}

}  // namespace gemma
