#include "jobs/sft.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "jobs/trainer.h"
#include "worker/comm.h"

namespace gemma {
namespace {

class SftJob : public Job {
 public:
  absl::Status Run(RankContext& ctx) override {
    GEMMA_ASSIGN_OR_RETURN(ParallelGroups groups, MakeParallelGroups(ctx));
    if (ctx.on_abort) ctx.on_abort([groups] { AbortGroups(groups); });
    TrainerOptions options;
    options.spec = ctx.spec;
    options.job = ctx.job;
    options.groups = groups;
    options.device = ctx.device.empty() ? "cpu" : ctx.device;
    GEMMA_ASSIGN_OR_RETURN(auto trainer, Trainer::Create(std::move(options)));
    return trainer->Run(ctx);
  }
};

}  // namespace

std::unique_ptr<Job> NewSftJob() { return std::make_unique<SftJob>(); }

}  // namespace gemma
