#include "jobs/peft_job.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "model/checkpoint.h"
#include "model/lora.h"
#include "worker/comm.h"

namespace gemma {
namespace {

constexpr char kAdapterTensors[] = "adapter.safetensors";

// The Gemma 3 model of a trainer (PEFT adapters exist for Gemma 3 only).
absl::StatusOr<Gemma3Model*> AdapterModel(TrainModel& model) {
  if (model.gemma3() == nullptr) {
    return absl::UnimplementedError(absl::StrCat(
        "peft: LoRA/DoRA training is for Gemma 3 models here; this model is ",
        model.family()));
  }
  return model.gemma3();
}

absl::StatusOr<int64_t> SaveAdapters(const gemma::v1::PeftSpec& peft,
                                     Gemma3Model& model, const std::string& dir,
                                     const TrainState& state) {
  GEMMA_RETURN_IF_ERROR(
      SaveAdapterCheckpoint(dir, model, peft, state.base_model, state.step));
  int64_t bytes = 0;
  for (const auto& [name, t] : AdapterParameters(model))
    bytes += t.numel() * static_cast<int64_t>(sizeof(float));
  return bytes;
}

// Copies the saved adapter values into the adapters already attached (the
// optimizer holds those tensors, so they are filled, not replaced).
absl::Status LoadAdapters(Gemma3Model& model, const std::string& dir) {
  const std::string file = absl::StrCat(dir, "/", kAdapterTensors);
  GEMMA_ASSIGN_OR_RETURN(auto saved, ReadTensorFile(file));
  auto params = AdapterParameters(model);
  for (const auto& [name, p] : params) {
    auto it = saved.find(name);
    if (it == saved.end())
      return absl::InvalidArgumentError(absl::StrCat(file, ": missing ", name));
    if (it->second.sizes() != p.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": ", name, " has shape ", c10::str(it->second.sizes()),
          ", expected ", c10::str(p.sizes())));
    }
  }
  if (saved.size() != params.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": holds ", saved.size(),
                     " tensors, the adapters have ", params.size()));
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : params) p.copy_(saved.at(name));
  return absl::OkStatus();
}

class PeftJob : public Job {
 public:
  absl::Status Run(RankContext& ctx) override {
    const int tp = ctx.spec.parallel().tp() > 0 ? ctx.spec.parallel().tp() : 1;
    if (tp != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.parallel.tp: peft trains with data parallelism "
                       "only here; got tp ",
                       tp));
    }
    GEMMA_ASSIGN_OR_RETURN(ParallelGroups groups, MakeParallelGroups(ctx));
    if (ctx.on_abort) ctx.on_abort([groups] { AbortGroups(groups); });
    TrainerOptions options = PeftTrainerOptions(ctx.spec);
    options.job = ctx.job;
    options.groups = groups;
    options.device = ctx.device.empty() ? "cpu" : ctx.device;
    GEMMA_ASSIGN_OR_RETURN(auto trainer, Trainer::Create(std::move(options)));
    GEMMA_RETURN_IF_ERROR(trainer->Run(ctx));
    if (groups.dp->rank() != 0) return absl::OkStatus();
    return FinishPeft(*trainer, ctx.spec, ctx);
  }
};

}  // namespace

TrainerOptions PeftTrainerOptions(const gemma::v1::JobSpec& spec) {
  TrainerOptions o;
  o.spec = spec;
  const gemma::v1::PeftSpec peft = spec.peft();
  o.model_hook = [peft](TrainModel& model) -> absl::Status {
    GEMMA_ASSIGN_OR_RETURN(Gemma3Model * m, AdapterModel(model));
    return AttachAdapters(*m, peft);
  };
  o.save_model = [peft](TrainModel& model, const std::string& dir,
                        const TrainState& state) -> absl::StatusOr<int64_t> {
    GEMMA_ASSIGN_OR_RETURN(Gemma3Model * m, AdapterModel(model));
    return SaveAdapters(peft, *m, dir, state);
  };
  o.load_model = [](TrainModel& model, const std::string& dir) -> absl::Status {
    GEMMA_ASSIGN_OR_RETURN(Gemma3Model * m, AdapterModel(model));
    return LoadAdapters(*m, dir);
  };
  return o;
}

absl::Status FinishPeft(Trainer& trainer, const gemma::v1::JobSpec& spec,
                        RankContext& ctx) {
  const auto& peft = spec.peft();
  GEMMA_ASSIGN_OR_RETURN(Gemma3Model * model, AdapterModel(trainer.model()));
  if (!peft.export_dir().empty()) {
    GEMMA_RETURN_IF_ERROR(ExportPeftAdapter(*model, peft, peft.export_dir(),
                                            trainer.state().base_model));
    ctx.Log(absl::StrCat("HF PEFT adapter exported to ", peft.export_dir()));
  }
  if (peft.merge()) {
    if (spec.output().empty()) {
      return absl::InvalidArgumentError(
          "spec.output: required with peft.merge");
    }
    GEMMA_RETURN_IF_ERROR(MergeAdapters(*model));
    const std::string merged = spec.output() + "/merged";
    const std::string staging = merged + ".staging";
    GEMMA_RETURN_IF_ERROR(RemoveTree(staging));
    GEMMA_ASSIGN_OR_RETURN(
        int64_t bytes,
        WriteModuleCheckpoint(staging, **model, trainer.config_json(),
                              (*model)->config().text.num_kv_heads,
                              trainer.step()));
    GEMMA_RETURN_IF_ERROR(
        CopyFile(trainer.tokenizer().path(), staging + "/tokenizer.model"));
    GEMMA_RETURN_IF_ERROR(PublishDir(staging, merged, /*overwrite=*/true));
    ctx.Log(absl::StrFormat("merged model written to %s (%.1f MB)", merged,
                            bytes / 1e6));
  }
  return absl::OkStatus();
}

std::unique_ptr<Job> NewPeftJob() { return std::make_unique<PeftJob>(); }

}  // namespace gemma
