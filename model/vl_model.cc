#include "model/vl_model.h"

#include <torch/torch.h>

#include <cmath>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace gemma {
namespace {

std::string ShapeString(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes().vec(), ", "), "]");
}

}  // namespace

WeightImpl::WeightImpl(int64_t rows, int64_t cols) {
  weight = register_parameter("weight", torch::zeros({rows, cols}));
}

MultiModalProjectorImpl::MultiModalProjectorImpl(const VisionConfig& vision,
                                                 int64_t text_hidden,
                                                 int64_t mm_tokens_per_image) {
  norm = register_module(
      "norm",
      RMSNorm(RMSNormOptions(vision.hidden_size).eps(vision.layer_norm_eps)));
  proj = register_module("proj", Weight(vision.hidden_size, text_hidden));
  patches_per_side_ = vision.patches_per_side();
  const auto tokens_per_side = static_cast<int64_t>(
      std::llround(std::sqrt(static_cast<double>(mm_tokens_per_image))));
  kernel_ = patches_per_side_ / tokens_per_side;
}

torch::Tensor MultiModalProjectorImpl::forward(
    const torch::Tensor& vision_out) {
  const int64_t n = vision_out.size(0), hv = vision_out.size(2);
  torch::Tensor grid =
      vision_out.transpose(1, 2)
          .reshape({n, hv, patches_per_side_, patches_per_side_})
          .contiguous();
  torch::Tensor pooled =
      torch::avg_pool2d(grid, {kernel_, kernel_}, {kernel_, kernel_});
  pooled = pooled.flatten(2).transpose(1, 2);  // [N, tokens, Hv]
  torch::Tensor projected = torch::matmul(norm(pooled), proj->weight);
  return projected.to(vision_out.scalar_type());
}

Gemma3ModelImpl::Gemma3ModelImpl(const ModelConfig& config, TpOptions tp)
    : config_(config) {
  text = register_module(
      "text",
      Gemma3TextModel(config.text,
                      /*apply_final_softcap=*/!config.is_vl(), std::move(tp)));
  if (config.is_vl()) {
    vision = register_module("vision", SiglipVisionTower(*config.vision));
    projector = register_module(
        "projector",
        MultiModalProjector(*config.vision, config.text.hidden_size,
                            config.mm_tokens_per_image));
  }
}

torch::Tensor Gemma3ModelImpl::ImageFeatures(
    const torch::Tensor& pixel_values) {
  TORCH_CHECK(vision, "this model has no vision tower (text-only config)");
  return projector(vision(pixel_values));
}

torch::Tensor Gemma3ModelImpl::Embeddings(const ModelInputs& in) {
  TORCH_CHECK(in.input_ids.defined() && in.input_ids.dim() == 2,
              "input_ids must be [batch, length], got ",
              in.input_ids.defined() ? ShapeString(in.input_ids) : "none");
  torch::Tensor ids = in.input_ids.to(torch::kLong);
  torch::Tensor image_mask;
  if (config_.is_vl()) {
    image_mask = ids.eq(config_.image_token_id);
    if (config_.image_token_id >= config_.text.vocab_size)
      ids = ids.masked_fill(image_mask, 0);
  }
  torch::Tensor embeds = text->Embed(ids);
  if (in.pixel_values.defined()) {
    TORCH_CHECK(config_.is_vl(), "pixel_values given to a text-only model");
    const VisionConfig& v = *config_.vision;
    TORCH_CHECK(in.pixel_values.dim() == 4 &&
                    in.pixel_values.size(1) == v.num_channels &&
                    in.pixel_values.size(2) == v.image_size &&
                    in.pixel_values.size(3) == v.image_size,
                "pixel_values must be [images, ", v.num_channels, ", ",
                v.image_size, ", ", v.image_size, "], got ",
                ShapeString(in.pixel_values));
    torch::Tensor features =
        ImageFeatures(in.pixel_values).to(embeds.scalar_type());
    const int64_t n_tokens = image_mask.sum().item<int64_t>();
    TORCH_CHECK(n_tokens * embeds.size(-1) == features.numel(),
                "image features and image tokens do not match: ", n_tokens,
                " image tokens (id ", config_.image_token_id, ") for ",
                features.size(0), " images of ", features.size(1), " tokens");
    embeds = embeds.masked_scatter(image_mask.unsqueeze(-1).to(embeds.device()),
                                   features);
  }
  return embeds;
}

torch::Tensor Gemma3ModelImpl::forward(const ModelInputs& in, KvCache* cache) {
  torch::Tensor embeds = Embeddings(in);
  const int64_t b = embeds.size(0), l = embeds.size(1);
  const int64_t past = cache != nullptr ? cache->seq_len() : 0;
  DecoderInputs d;
  d.cache = cache;
  if (in.attention_mask.defined()) {
    TORCH_CHECK(
        in.attention_mask.dim() == 2 && in.attention_mask.size(0) == b &&
            in.attention_mask.size(1) == past + l,
        "attention_mask must be [", b, ", ", past + l,
        "] (cached + new tokens), got ", ShapeString(in.attention_mask));
    d.attention_mask = in.attention_mask;
  }
  if (in.position_ids.defined()) {
    TORCH_CHECK(
        in.position_ids.dim() == 2 && in.position_ids.size(1) == l &&
            (in.position_ids.size(0) == b || in.position_ids.size(0) == 1),
        "position_ids must be [", b, " or 1, ", l, "], got ",
        ShapeString(in.position_ids));
    d.position_ids = in.position_ids.to(torch::kLong);
  }
  if (in.token_type_ids.defined()) {
    TORCH_CHECK(in.token_type_ids.sizes() == in.input_ids.sizes(),
                "token_type_ids must have the shape of input_ids, got ",
                ShapeString(in.token_type_ids));
    d.block_ids = BlockIdsFromTokenTypes(in.token_type_ids);
  }
  return text->Logits(text->Decode(embeds, d));
}

absl::StatusOr<torch::Tensor> Gemma3ModelImpl::Forward(
    const ModelInputs& inputs, KvCache* cache) {
  try {
    return forward(inputs, cache);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("gemma3 forward: ", e.what_without_backtrace()));
  }
}

absl::Status LoadParameters(torch::nn::Module& module,
                            const std::map<std::string, torch::Tensor>& weights,
                            const std::string& prefix) {
  auto params = module.named_parameters(/*recurse=*/true);
  std::vector<std::string> missing, bad_shape, unexpected;
  std::set<std::string> expected;
  for (const auto& item : params) {
    const std::string name = prefix + item.key();
    expected.insert(name);
    auto it = weights.find(name);
    if (it == weights.end()) {
      missing.push_back(name);
    } else if (!it->second.defined() ||
               it->second.sizes() != item.value().sizes()) {
      bad_shape.push_back(
          absl::StrCat(name, " (got ",
                       it->second.defined() ? ShapeString(it->second) : "none",
                       ", expected ", ShapeString(item.value()), ")"));
    }
  }
  for (const auto& [name, tensor] : weights) {
    if (name.compare(0, prefix.size(), prefix) == 0 &&
        expected.count(name) == 0) {
      unexpected.push_back(name);
    }
  }
  if (!missing.empty() || !bad_shape.empty() || !unexpected.empty()) {
    auto head = [](const std::vector<std::string>& v) {
      constexpr size_t kShown = 8;
      std::vector<std::string> shown(v.begin(),
                                     v.begin() + std::min(v.size(), kShown));
      std::string s = absl::StrJoin(shown, ", ");
      if (v.size() > kShown)
        absl::StrAppend(&s, ", ... (", v.size(), " in all)");
      return s;
    };
    std::string msg = "loading parameters:";
    if (!missing.empty())
      absl::StrAppend(&msg, " missing: ", head(missing), ";");
    if (!bad_shape.empty())
      absl::StrAppend(&msg, " wrong shape: ", head(bad_shape), ";");
    if (!unexpected.empty())
      absl::StrAppend(&msg, " unexpected: ", head(unexpected), ";");
    return absl::InvalidArgumentError(msg);
  }
  try {
    torch::NoGradGuard no_grad;
    for (auto& item : params)
      item.value().copy_(weights.at(prefix + item.key()));
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("loading parameters: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::StatusOr<Gemma3Model> BuildGemma3Model(
    const ModelConfig& config,
    const std::map<std::string, torch::Tensor>& weights, TpOptions tp) {
  Gemma3Model model{nullptr};
  try {
    model = Gemma3Model(config, std::move(tp));
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(e.what_without_backtrace());
  }
  absl::Status st = LoadParameters(*model, weights);
  if (!st.ok()) return st;
  model->eval();
  return model;
}

}  // namespace gemma
