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

// Collective over the TP group (every TP rank of DP rank 0 calls it): TP
// rank 0 writes the whole adapters and counts their bytes.
absl::StatusOr<int64_t> SaveAdapters(const gemma::v1::PeftSpec& peft,
                                     TrainModel& model, const std::string& dir,
                                     const TrainState& state) {
  GEMMA_ASSIGN_OR_RETURN(AdapterLayout layout, AdapterLayoutOf(model.module()));
  GEMMA_RETURN_IF_ERROR(SaveAdapterCheckpoint(dir, model.module(), layout, peft,
                                              state.base_model, state.step));
  if (!WritesAdapterFiles(model.module(), layout)) return 0;
  return AdapterCheckpointBytes(model.module(), layout);
}

// Copies the saved adapter values into the adapters already attached (the
// optimizer holds those tensors, so they are filled, not replaced), each TP
// rank its shard.
absl::Status LoadAdapters(TrainModel& model, const std::string& dir) {
  GEMMA_ASSIGN_OR_RETURN(AdapterLayout layout, AdapterLayoutOf(model.module()));
  return LoadAdapterValues(dir, model.module(), layout);
}

class PeftJob : public Job {
 public:
  absl::Status Run(RankContext& ctx) override {
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
  // The adapters are the same on every DP rank: DP rank 0 exports them (its
  // TP ranks gather their shards, TP rank 0 writes).
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
  if (groups.world->rank() == 0) {
    ctx.Log(absl::StrFormat("merged model written to %s (%.1f MB per rank)",
                            merged, bytes / 1e6));
  }
  return absl::OkStatus();
}

std::unique_ptr<Job> NewPeftJob() { return std::make_unique<PeftJob>(); }

}  // namespace gemma
