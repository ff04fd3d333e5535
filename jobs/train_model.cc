#include "jobs/train_model.h"

#include <torch/torch.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "jobs/train_state.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/gemma4_config.h"
#include "model/recompute.h"
#include "model/vl_model.h"
#include "model/weights.h"

namespace gemma {

std::pair<int64_t, int64_t> ReplicaNormSkip(
    const torch::OrderedDict<std::string, std::shared_ptr<torch::nn::Module>>&
        modules,
    const std::string& name, const at::Tensor& param) {
  std::string projection;
  for (const char* suffix : {".weight", ".lora.b", ".lora.m"}) {
    if (absl::EndsWith(name, suffix)) {
      projection = name.substr(0, name.size() - std::strlen(suffix));
    }
  }
  const std::shared_ptr<torch::nn::Module>* m = modules.find(projection);
  if (projection.empty() || m == nullptr || param.dim() < 1 ||
      param.dim() > 2) {
    return {0, 0};
  }
  const auto* p = (*m)->as<ProjectionImpl>();
  if (p == nullptr || p->tp_split.kind != ProjectionSplit::Kind::kColumn) {
    return {0, 0};
  }
  const ProjectionSplit::Ranges copies = LowerRankCopies(p->tp_split);
  if (copies.empty()) return {0, 0};
  TORCH_CHECK(copies.size() == 1, name,
              ": replicated rows in more than one range");
  const int64_t cols = param.dim() == 2 ? param.size(1) : 1;
  return {copies[0].first * cols, copies[0].second * cols};
}

GradKind GradKindOf(TpGrad tp) {
  switch (tp) {
    case TpGrad::kSharded:
      return GradKind::kTpSharded;
    case TpGrad::kPartial:
      return GradKind::kTpPartial;
    case TpGrad::kReplicated:
      break;
  }
  return GradKind::kReplicated;
}
namespace {

class Gemma3TrainModel : public TrainModel {
 public:
  Gemma3TrainModel(Gemma3Model model, ModelConfig config,
                   std::string config_json, TpOptions tp)
      : model_(std::move(model)),
        config_(std::move(config)),
        config_json_(std::move(config_json)),
        tp_(std::move(tp)) {}

  torch::nn::Module& module() override { return *model_; }
  const std::string& config_json() const override { return config_json_; }
  Gemma3Model* gemma3() override { return &model_; }

  void ConfigureBatches(BatchOptions& bo) const override {
    bo.chat.mm_tokens_per_image = static_cast<int>(config_.mm_tokens_per_image);
    bo.text_only = !config_.vision;
    if (config_.vision)
      bo.image.image_size = static_cast<int>(config_.vision->image_size);
  }

  LmLoss Loss(const Batch& batch, bool packed, bool recompute) override {
    ModelInputs in;
    in.input_ids = batch.input_ids;
    if (packed) {
      in.position_ids = batch.position_ids;
    } else {
      in.attention_mask = batch.attention_mask;
    }
    if (config_.is_vl()) {
      in.token_type_ids = batch.token_type_ids;
      if (batch.pixel_values.defined() && batch.pixel_values.numel() > 0)
        in.pixel_values = batch.pixel_values;
    }
    torch::Tensor embeds = model_->Embeddings(in);
    DecoderInputs d;
    d.attention_mask = in.attention_mask;
    d.position_ids = in.position_ids;
    if (config_.is_vl())
      d.block_ids = BlockIdsFromTokenTypes(in.token_type_ids);
    torch::Tensor hidden;
    {
      RecomputeScope scope(recompute);
      hidden = model_->text->Decode(embeds, d);
    }
    LmLossOptions lo;
    if (!config_.is_vl() && config_.text.final_logit_softcapping)
      lo.softcap = *config_.text.final_logit_softcapping;
    return model_->text->Loss(hidden, batch.labels, lo);
  }

  GradKind Grad(const std::string& name) const override {
    return GradKindOf(Gemma3TpGrad(name, tp_));
  }

  absl::StatusOr<int64_t> Write(const std::string& dir, int64_t step) override {
    return WriteModuleCheckpointShard(dir, *model_, config_json_,
                                      config_.text.num_kv_heads,
                                      config_.text.vocab_size, step, *tp_.comm);
  }

  absl::Status Load(const std::string& dir) override {
    GEMMA_ASSIGN_OR_RETURN(ModelWeights w,
                           LoadModelWeights(dir, tp_.size(), tp_.rank()));
    return LoadIntoModel(dir,
                         [&] { return LoadParameters(*model_, w.tensors); });
  }

 private:
  Gemma3Model model_;
  ModelConfig config_;
  std::string config_json_;
  TpOptions tp_;
};

absl::StatusOr<std::unique_ptr<TrainModel>> OpenGemma3TrainModel(
    const std::string& dir, const ParallelGroups& groups,
    const gemma::v1::JobSpec& spec) {
  Comm& tp = *groups.tp;
  if (groups.ep->size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.parallel.ep: ", groups.ep->size(), " but ", dir,
        " holds a dense Gemma 3 model (expert parallelism is for Gemma 4)"));
  }
  GEMMA_ASSIGN_OR_RETURN(ModelWeights weights,
                         LoadModelWeights(dir, tp.size(), tp.rank()));
  GEMMA_ASSIGN_OR_RETURN(ModelConfig config,
                         ParseModelConfigText(weights.config_json, dir));
  TpOptions opts;
  opts.comm = groups.tp;
  opts.sequence_parallel = spec.parallel().sequence_parallel();
  auto model = BuildGemma3Model(config, weights.tensors, opts);
  if (!model.ok()) {
    return WithContext(
        absl::StrCat(dir, " at spec.parallel.tp=", tp.size(), ": "),
        model.status());
  }
  return std::make_unique<Gemma3TrainModel>(
      *model, std::move(config), std::move(weights.config_json), opts);
}

}  // namespace

Batch BatchOnDevice(const Batch& batch, const c10::Device& device,
                    at::ScalarType pixel_dtype, bool non_blocking) {
  auto on = [&](const at::Tensor& t) {
    return t.defined() ? t.to(device, non_blocking) : t;
  };
  Batch b = batch;
  b.input_ids = on(batch.input_ids);
  b.labels = on(batch.labels);
  b.attention_mask = on(batch.attention_mask);
  b.position_ids = on(batch.position_ids);
  b.segment_ids = on(batch.segment_ids);
  b.token_type_ids = on(batch.token_type_ids);
  b.image_positions = on(batch.image_positions);
  if (batch.pixel_values.defined() && batch.pixel_values.numel() > 0)
    b.pixel_values = on(batch.pixel_values).to(pixel_dtype);
  return b;
}

absl::Status LoadIntoModel(const std::string& dir,
                           const std::function<absl::Status()>& load) {
  absl::Status loaded;
  try {
    torch::NoGradGuard no_grad;
    loaded = load();
  } catch (const c10::Error& e) {
    loaded = absl::InternalError(e.what_without_backtrace());
  }
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": ", loaded.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ModelFamily(const std::string& dir) {
  std::string text;
  const std::string manifest = absl::StrCat(dir, "/manifest.json");
  if (PathExists(manifest)) {
    GEMMA_ASSIGN_OR_RETURN(std::string m, ReadWholeFile(manifest));
    nlohmann::json doc = nlohmann::json::parse(m, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(manifest, ": not a JSON object"));
    }
    auto it = doc.find("model_config");
    if (it != doc.end()) {
      text = it->is_string() ? it->get<std::string>() : it->dump();
    }
  }
  if (text.empty()) {
    const std::string config = absl::StrCat(dir, "/config.json");
    if (!PathExists(config)) {
      return absl::NotFoundError(
          absl::StrCat(dir,
                       ": no config.json or manifest.json (not a model "
                       "folder)"));
    }
    GEMMA_ASSIGN_OR_RETURN(text, ReadWholeFile(config));
  }
  return IsGemma4ConfigText(text) ? "gemma4" : "gemma3";
}

absl::StatusOr<std::unique_ptr<TrainModel>> OpenTrainModel(
    const std::string& dir, const ParallelGroups& groups,
    const gemma::v1::JobSpec& spec) {
  GEMMA_ASSIGN_OR_RETURN(std::string family, ModelFamily(dir));
  if (family == "gemma4") return OpenGemma4TrainModel(dir, groups, spec);
  return OpenGemma3TrainModel(dir, groups, spec);
}

}  // namespace gemma
