// Gemma 4 (mixture of experts) behind jobs/train_model.h: tensor parallelism
// over groups.tp, expert parallelism over groups.ep (folded over the TP
// ranks: model/comm.h), expert gradients over groups.edp, router load
// metrics.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "data/chat.h"
#include "jobs/train_model.h"
#include "jobs/train_state.h"
#include "model/checkpoint.h"
#include "model/convert.h"
#include "model/gemma4_checkpoint.h"
#include "model/gemma4_model.h"
#include "model/hf_mapping_gemma4.h"
#include "model/recompute.h"

namespace gemma {
namespace {

class Gemma4TrainModel : public TrainModel {
 public:
  Gemma4TrainModel(Gemma4Model model, Gemma4ModelConfig config,
                   std::string config_json, ParallelGroups groups)
      : model_(std::move(model)),
        config_(std::move(config)),
        config_json_(std::move(config_json)),
        groups_(std::move(groups)) {}

  torch::nn::Module& module() override { return *model_; }
  const std::string& config_json() const override { return config_json_; }
  Gemma4Model* gemma4() override { return &model_; }

  void ConfigureBatches(BatchOptions& bo) const override {
    bo.chat.format = ChatFormat::kGemma4;
    bo.text_only = !config_.is_vl();
    if (config_.vision) {
      bo.gemma4_image.patch_size = static_cast<int>(config_.vision->patch_size);
      bo.gemma4_image.pooling_kernel_size =
          static_cast<int>(config_.vision->pooling_kernel_size);
    }
    bo.gemma4_image.max_soft_tokens = max_soft_tokens_;
  }

  absl::Status CheckTokenizer(const Tokenizer& tok) const override {
    if (!config_.is_vl()) return absl::OkStatus();
    const SpecialTokenIds& s = tok.special();
    const std::pair<int, int64_t> pairs[] = {
        {s.image_placeholder, config_.image_token_id},
        {s.image_open, config_.boi_token_id},
        {s.image_close, config_.eoi_token_id}};
    for (const auto& [ours, theirs] : pairs) {
      if (ours != theirs) {
        return absl::FailedPreconditionError(
            absl::StrCat("tokenizer ", tok.path(), ": image token id ", ours,
                         " differs from the model config's ", theirs,
                         " (image_token_id / boi_token_id / eoi_token_id)"));
      }
    }
    return absl::OkStatus();
  }

  void set_max_soft_tokens(int n) { max_soft_tokens_ = n; }

  LmLoss Loss(const Batch& batch, bool packed, bool recompute) override {
    Gemma4Inputs in;
    in.input_ids = batch.input_ids;
    if (packed) {
      in.position_ids = batch.position_ids;
    } else {
      in.attention_mask = batch.attention_mask;
    }
    const bool images =
        batch.pixel_values.defined() && batch.pixel_values.numel() > 0;
    if (images) {
      in.pixel_values = batch.pixel_values;
      in.image_positions = batch.image_positions;
    }
    torch::Tensor embeds = model_->Embeddings(in);
    Gemma4DecoderInputs d;
    d.attention_mask = in.attention_mask;
    d.position_ids = in.position_ids;
    // Image blocks (bidirectional on sliding layers), as the model's forward.
    if (images) d.block_ids = BlockIdsFromTokenTypes(batch.token_type_ids);
    torch::Tensor hidden;
    {
      RecomputeScope scope(recompute);
      hidden = model_->text->Decode(embeds, d);
    }
    // Soft-capped, vocab-parallel under TP.
    return model_->text->Loss(hidden, batch.labels);
  }

  GradKind Grad(const std::string& name) const override {
    // Experts: summed over the ranks holding the same ones (under TP each
    // rank routes only its share of the tokens, so even unsplit experts get
    // partial gradients).
    if ((groups_.ep->size() > 1 || groups_.tp->size() > 1) &&
        absl::StrContains(name, ".moe.experts.")) {
      return GradKind::kExpert;
    }
    return GradKindOf(Gemma4TpGrad(name, model_->text->tp()));
  }

  CheckpointLayout layout() const {
    return {groups_.tp->size(), groups_.ep->size()};
  }

  absl::StatusOr<int64_t> Write(const std::string& dir, int64_t step) override {
    // The writers are world ranks [0, max(tp, ep)): the first EP group when
    // ep >= tp, else the first TP group (one of tp, ep divides the other);
    // world rank r writes file rank r.
    const CheckpointLayout l = layout();
    Comm& group = l.ep >= l.tp ? *groups_.ep : *groups_.tp;
    const int rank = group.rank();
    std::map<std::string, at::Tensor> tensors;
    int64_t bytes = 0;
    auto collect = [&]() -> absl::Status {
      torch::NoGradGuard no_grad;
      for (const auto& p : model_->named_parameters())
        tensors[p.key()] = p.value().detach().to(torch::kCPU).contiguous();
      for (const auto& b : model_->named_buffers())
        tensors[b.key()] = b.value().detach().to(torch::kCPU).contiguous();
      return absl::OkStatus();
    };
    absl::Status st = collect();
    if (st.ok() && rank == 0) st = RemoveTree(dir + ".tmp");
    // The folder is fresh before anyone writes into it.
    GEMMA_RETURN_IF_ERROR(AgreeAllOk(group, st, dir));
    absl::StatusOr<ManifestFile> file =
        WriteGemma4RankFile(dir, config_, l, rank, tensors);
    GEMMA_RETURN_IF_ERROR(AgreeAllOk(group, file.status(), dir));
    bytes = static_cast<int64_t>(file->bytes);
    // Rank 0 commits with every file's size and checksum.
    GEMMA_ASSIGN_OR_RETURN(std::vector<ManifestFile> files,
                           GatherManifestFiles(group, *file, dir));
    if (rank == 0) {
      st = CommitGemma4Checkpoint(dir, config_json_, config_, l, step, tensors,
                                  files);
    }
    GEMMA_RETURN_IF_ERROR(AgreeAllOk(group, st, dir));
    return bytes;
  }

  absl::Status Load(const std::string& dir) override {
    GEMMA_ASSIGN_OR_RETURN(
        Gemma4RankWeights w,
        LoadGemma4RankWeights(dir, layout(), groups_.tp->rank(),
                              groups_.ep->rank()));
    return LoadIntoModel(dir, [&] {
      return LoadGemma4ModuleWeights(*model_, w.tensors, "", groups_.ep->rank(),
                                     groups_.ep->size());
    });
  }

  std::map<std::string, double> TakeMetrics() override {
    torch::Tensor counts = model_->text->TokensPerExpert();  // [layers, E]
    model_->text->ResetRouterStats();
    if (!counts.defined() || counts.numel() == 0) return {};
    // Every rank counted its own tokens (its TP share of its DP replica's).
    counts = counts.to(torch::kFloat64).to(groups_.world->device());
    groups_.world->AllReduceSum(counts);
    counts = counts.cpu();
    if (counts.sum().item<double>() == 0) return {};
    // Per layer: the busiest and the idlest expert against the mean.
    torch::Tensor mean = counts.mean(1).clamp_min(1e-9);
    torch::Tensor max_load = std::get<0>(counts.max(1)) / mean;
    torch::Tensor min_load = std::get<0>(counts.min(1)) / mean;
    return {{"moe_max_load", max_load.max().item<double>()},
            {"moe_mean_max_load", max_load.mean().item<double>()},
            {"moe_min_load", min_load.min().item<double>()}};
  }

 private:
  Gemma4Model model_;
  Gemma4ModelConfig config_;
  std::string config_json_;
  ParallelGroups groups_;
  int max_soft_tokens_ = 280;
};

// The image processor's soft-token budget saved with the model
// (processor_config.json / preprocessor_config.json "max_soft_tokens", at the
// top or under "image_processor"); 280 (HF's default) when absent.
absl::StatusOr<int> MaxSoftTokens(const std::string& dir) {
  for (const char* name :
       {"processor_config.json", "preprocessor_config.json"}) {
    const std::string file = absl::StrCat(dir, "/", name);
    if (!PathExists(file)) continue;
    GEMMA_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(file));
    nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": not a JSON object"));
    }
    for (const nlohmann::json* j :
         {&doc, doc.contains("image_processor") ? &doc["image_processor"]
                                                : nullptr}) {
      if (j == nullptr || !j->is_object() || !j->contains("max_soft_tokens"))
        continue;
      const auto& v = (*j)["max_soft_tokens"];
      if (!v.is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat(file, ": max_soft_tokens: not an integer"));
      }
      return v.get<int>();
    }
  }
  return 280;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TrainModel>> OpenGemma4TrainModel(
    const std::string& dir, const ParallelGroups& groups,
    const gemma::v1::JobSpec& spec) {
  const int tp = groups.tp->size(), ep = groups.ep->size();
  if (spec.parallel().sequence_parallel()) {
    return absl::InvalidArgumentError(
        "spec.parallel.sequence_parallel: not supported for Gemma 4 models "
        "(the MoE block splits the tokens over the TP ranks itself)");
  }
  if (tp > 1 && ep > 1 && tp % ep != 0 && ep % tp != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.parallel.ep: ", ep, " with tp ", tp,
        ": one of tp and ep must divide the other (EP groups fold over the "
        "TP ranks)"));
  }
  GEMMA_ASSIGN_OR_RETURN(ModelFolderInfo info, InspectModelFolder(dir));
  GEMMA_RETURN_IF_ERROR(CheckConvertLayout(info, tp, ep, "spec.parallel.tp",
                                           "spec.parallel.ep"));
  const CheckpointLayout layout{tp, ep};
  GEMMA_ASSIGN_OR_RETURN(
      Gemma4RankWeights w,
      LoadGemma4RankWeights(dir, layout, groups.tp->rank(), groups.ep->rank()));
  Gemma4ModelConfig config = w.config;
  std::string config_json = w.config_json;
  std::map<std::string, at::Tensor> weights = std::move(w.tensors);
  TpOptions tpo;
  tpo.comm = groups.tp;
  auto model = BuildGemma4Model(config, weights, groups.ep, tpo);
  if (!model.ok()) {
    return WithContext(
        absl::StrCat(dir, " at spec.parallel.tp=", tp, " ep=", ep, ": "),
        model.status());
  }
  GEMMA_ASSIGN_OR_RETURN(int max_soft_tokens, MaxSoftTokens(dir));
  auto out = std::make_unique<Gemma4TrainModel>(*model, std::move(config),
                                                std::move(config_json), groups);
  out->set_max_soft_tokens(max_soft_tokens);
  return out;
}

}  // namespace gemma
