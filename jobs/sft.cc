#include "jobs/sft.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "jobs/trainer.h"

namespace gemma {
namespace {

class SftJob : public Job {
 public:
  absl::Status Run(RankContext& ctx) override {
    if (ctx.world != 1) {
      // The c10d groups come from the `dist` work (worker/comm.h); until the
      // worker hands them to jobs, SFT runs as one rank.
      return absl::FailedPreconditionError(absl::StrCat(
          "sft: this worker runs training as one rank; the job asked for ",
          ctx.world, " ranks (set parallel.dp and parallel.tp to 1)"));
    }
    if (ctx.device.rfind("cuda", 0) == 0) {
      ctx.Log("sft: CUDA training is not wired yet; running on the CPU");
    }
    TrainerOptions options;
    options.spec = ctx.spec;
    options.job = ctx.job;
    GEMMA_ASSIGN_OR_RETURN(auto trainer, Trainer::Create(std::move(options)));
    return trainer->Run(ctx);
  }
};

}  // namespace

std::unique_ptr<Job> NewSftJob() { return std::make_unique<SftJob>(); }

}  // namespace gemma
