#include "model/gemma4_model.h"

#include <torch/torch.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/hf_mapping_gemma4.h"

namespace gemma {

Gemma4ModelImpl::Gemma4ModelImpl(const Gemma4ModelConfig& config,
                                 std::shared_ptr<Comm> ep, TpOptions tp)
    : config_(config) {
  text = register_module(
      "text", Gemma4TextModel(config.text, std::move(ep), std::move(tp)));
  if (config.vision) {
    vision = register_module("vision", Gemma4VisionTower(*config.vision));
    projector = register_module(
        "projector",
        Gemma4Embedder(config.vision->hidden_size, config.text.hidden_size,
                       config.vision->rms_norm_eps));
  }
}

torch::Tensor Gemma4ModelImpl::Embeddings(const Gemma4Inputs& in) {
  TORCH_CHECK(in.input_ids.defined() && in.input_ids.dim() == 2,
              "Gemma 4: input_ids must be [B, L]");
  torch::Tensor image_mask = in.input_ids.eq(config_.image_token_id);
  torch::Tensor ids = torch::where(
      image_mask,
      torch::full({}, config_.text.pad_token_id, in.input_ids.options()),
      in.input_ids);
  torch::Tensor embeds = text->Embed(ids);
  if (!in.pixel_values.defined()) return embeds;
  TORCH_CHECK(vision, "Gemma 4: pixel_values given to a text-only model");
  torch::Tensor soft =
      projector(
          vision(in.pixel_values.to(embeds.scalar_type()), in.image_positions))
          .to(embeds.scalar_type());
  const int64_t n_tokens = image_mask.sum().item<int64_t>();
  TORCH_CHECK(n_tokens == soft.size(0),
              "Gemma 4: image tokens and image features do not match, tokens: ",
              n_tokens, ", features: ", soft.size(0));
  return embeds.masked_scatter(image_mask.unsqueeze(-1).expand_as(embeds),
                               soft);
}

torch::Tensor Gemma4ModelImpl::forward(const Gemma4Inputs& in, KvCache* cache) {
  Gemma4DecoderInputs d;
  d.attention_mask = in.attention_mask;
  d.position_ids = in.position_ids;
  d.cache = cache;
  if (config_.is_vl() && in.pixel_values.defined()) {
    d.block_ids = BlockIdsFromTokenTypes(
        in.input_ids.eq(config_.image_token_id).to(torch::kLong));
  }
  return text->Logits(text->Decode(Embeddings(in), d));
}

absl::StatusOr<torch::Tensor> Gemma4ModelImpl::Forward(const Gemma4Inputs& in,
                                                       KvCache* cache) {
  try {
    return forward(in, cache);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(e.what_without_backtrace());
  }
}

absl::StatusOr<std::map<std::string, at::Tensor>> Gemma4ModelFromHf(
    const std::map<std::string, at::Tensor>& hf,
    const Gemma4ModelConfig& config, const std::string& source) {
  GEMMA_ASSIGN_OR_RETURN(auto out, Gemma4FromHf(hf, config.text, source));
  if (!config.vision) return out;
  std::set<std::string> used;
  for (const ParamMapping& m :
       BuildGemma4VisionMapping(*config.vision, config.text.hidden_size)) {
    std::vector<at::Tensor> parts;
    for (const HfRows& p : m.pieces) {
      auto it = hf.find(p.hf_name);
      if (it == hf.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": tensor '", p.hf_name,
                         "' missing (needed for ", m.name, ")"));
      }
      if (it->second.dim() == 0 || it->second.size(0) < p.row_end) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": tensor '", p.hf_name, "' is too small"));
      }
      used.insert(p.hf_name);
      parts.push_back(
          it->second.narrow(0, p.row_begin, p.row_end - p.row_begin));
    }
    at::Tensor t =
        parts.size() == 1 ? parts[0].contiguous() : torch::cat(parts, 0);
    if (t.sizes().vec() != m.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": ", m.pieces[0].hf_name, " does not fit ",
                       m.name, " as the config implies"));
    }
    out.emplace(m.name, t);
  }
  for (const auto& [name, t] : hf) {
    if ((absl::StartsWith(name, "model.vision_tower.") ||
         absl::StartsWith(name, "model.embed_vision.")) &&
        !used.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", name, "' is not used by this vision config"));
    }
  }
  return out;
}

absl::StatusOr<std::map<std::string, at::Tensor>> Gemma4ModelToHf(
    const std::map<std::string, at::Tensor>& ours,
    const Gemma4ModelConfig& config, const std::string& source) {
  GEMMA_ASSIGN_OR_RETURN(auto text, Gemma4ToHf(ours, config.text, source));
  if (!config.vision) return text;
  std::map<std::string, at::Tensor> out;
  for (auto& [name, t] : text) {  // "model.X" -> "model.language_model.X"
    out.emplace("model.language_model." + name.substr(6), t);
  }
  std::map<std::string, std::vector<std::pair<int64_t, at::Tensor>>> rows;
  for (const ParamMapping& m :
       BuildGemma4VisionMapping(*config.vision, config.text.hidden_size)) {
    auto it = ours.find(m.name);
    if (it == ours.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tensor '", m.name, "' missing"));
    }
    if (it->second.sizes().vec() != m.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tensor '", m.name,
                       "' does not have the shape the config implies"));
    }
    int64_t at_row = 0;
    for (const HfRows& p : m.pieces) {
      const int64_t n = p.row_end - p.row_begin;
      rows[p.hf_name].emplace_back(p.row_begin,
                                   it->second.narrow(0, at_row, n));
      at_row += n;
    }
  }
  for (auto& [name, pieces] : rows) {
    std::sort(pieces.begin(), pieces.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<at::Tensor> parts;
    for (auto& p : pieces) parts.push_back(p.second);
    out.emplace(
        name, parts.size() == 1 ? parts[0].contiguous() : torch::cat(parts, 0));
  }
  return out;
}

absl::StatusOr<Gemma4Model> BuildGemma4Model(
    const Gemma4ModelConfig& config,
    const std::map<std::string, at::Tensor>& weights,
    std::shared_ptr<Comm> ep, TpOptions tp) {
  try {
    Gemma4Model model(config, ep, std::move(tp));
    GEMMA_RETURN_IF_ERROR(LoadGemma4ModuleWeights(
        *model, weights, "", model->text->ep_rank(), model->text->ep_size()));
    return model;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "building the Gemma 4 model: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<Gemma4Model> LoadGemma4Model(const std::string& dir,
                                            std::shared_ptr<Comm> ep) {
  std::ifstream in(dir + "/config.json");
  if (!in) return absl::NotFoundError(dir + "/config.json: cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  GEMMA_ASSIGN_OR_RETURN(
      Gemma4ModelConfig config,
      ParseGemma4ModelConfigText(ss.str(), dir + "/config.json"));
  GEMMA_ASSIGN_OR_RETURN(auto raw, ReadSafetensorsFolder(dir));
  GEMMA_ASSIGN_OR_RETURN(auto weights, Gemma4ModelFromHf(raw, config, dir));
  auto model = BuildGemma4Model(config, weights, std::move(ep));
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat(dir, ": ", model.status().message()));
  }
  return model;
}

}  // namespace gemma
