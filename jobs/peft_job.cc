#include "jobs/peft_job.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "jobs/train_state.h"
#include "model/checkpoint.h"
#include "model/lora.h"
#include "model/lora_layout.h"
#include "worker/comm.h"

namespace gemma {
namespace {

constexpr char kAdapterTensors[] = "adapter.safetensors";

absl::StatusOr<int64_t> SaveAdapters(const gemma::v1::PeftSpec& peft,
                                     TrainModel& model, const std::string& dir,
                                     const TrainState& state) {
  GEMMA_ASSIGN_OR_RETURN(AdapterLayout layout, AdapterLayoutOf(model.module()));
  GEMMA_RETURN_IF_ERROR(SaveAdapterCheckpoint(dir, model.module(), layout, peft,
                                              state.base_model, state.step));
  int64_t bytes = 0;
  for (const auto& [name, t] : AdapterParameters(model.module()))
    bytes += t.numel() * static_cast<int64_t>(sizeof(float));
  return bytes;
}

// Copies the saved adapter values into the adapters already attached (the
// optimizer holds those tensors, so they are filled, not replaced).
absl::Status LoadAdapters(TrainModel& model, const std::string& dir) {
  const std::string file = absl::StrCat(dir, "/", kAdapterTensors);
  GEMMA_ASSIGN_OR_RETURN(auto saved, ReadTensorFile(file));
  auto params = AdapterParameters(model.module());
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
    return FinishPeft(*trainer, ctx.spec, ctx);
  }
};

}  // namespace

TrainerOptions PeftTrainerOptions(const gemma::v1::JobSpec& spec) {
  TrainerOptions o;
  o.spec = spec;
  const gemma::v1::PeftSpec peft = spec.peft();
  o.model_hook = [peft](TrainModel& model) -> absl::Status {
    GEMMA_ASSIGN_OR_RETURN(AdapterLayout layout,
                           AdapterLayoutOf(model.module()));
    return AttachAdapters(model.module(), layout, peft);
  };
  o.save_model = [peft](TrainModel& model, const std::string& dir,
                        const TrainState& state) {
    return SaveAdapters(peft, model, dir, state);
  };
  o.load_model = LoadAdapters;
  return o;
}

absl::Status FinishPeft(Trainer& trainer, const gemma::v1::JobSpec& spec,
                        RankContext& ctx) {
  const auto& peft = spec.peft();
  const ParallelGroups& groups = trainer.groups();
  torch::nn::Module& module = trainer.module();
  GEMMA_ASSIGN_OR_RETURN(AdapterLayout layout, AdapterLayoutOf(module));
  // The adapters are replicated on every rank: DP rank 0 exports them.
  absl::Status st;
  if (!peft.export_dir().empty() && groups.dp->rank() == 0) {
    st = ExportPeftAdapter(module, layout, peft, peft.export_dir(),
                           trainer.state().base_model);
    if (st.ok())
      ctx.Log(absl::StrCat("HF PEFT adapter exported to ", peft.export_dir()));
  }
  GEMMA_RETURN_IF_ERROR(AgreeAllOk(*groups.world, st, "peft export"));
  if (!peft.merge()) return absl::OkStatus();
  if (spec.output().empty()) {
    return absl::InvalidArgumentError("spec.output: required with peft.merge");
  }
  // The merged model is written like a trained one: by the first max(tp, ep)
  // ranks (ParallelGroups::writes_model), each its part (TrainModel::Write),
  // then published by world rank 0.
  GEMMA_RETURN_IF_ERROR(MergeAdapters(module, layout));
  const std::string merged = spec.output() + "/merged";
  const std::string staging = merged + ".staging";
  int64_t bytes = 0;
  if (groups.writes_model()) {
    auto written = trainer.model().Write(staging, trainer.step());
    st = written.status();
    if (st.ok()) bytes = *written;
    if (st.ok() && groups.world->rank() == 0) {
      st = CopyFile(trainer.tokenizer().path(), staging + "/tokenizer.model");
      if (st.ok()) st = PublishDir(staging, merged, /*overwrite=*/true);
    }
  }
  GEMMA_RETURN_IF_ERROR(AgreeAllOk(*groups.world, st, "peft merge"));
  if (groups.dp->rank() == 0) {
    ctx.Log(absl::StrFormat("merged model written to %s (%.1f MB per rank)",
                            merged, bytes / 1e6));
  }
  return absl::OkStatus();
}

std::unique_ptr<Job> NewPeftJob() { return std::make_unique<PeftJob>(); }

}  // namespace gemma
