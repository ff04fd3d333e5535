#include "jobs/one_rank_job.h"

#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"

namespace gemma {

absl::Status OneRankJob::Run(RankContext& ctx) {
  if (ctx.world != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        kind_, " runs as one rank (world ", ctx.world, ")", world_hint_));
  }
  try {
    return RunOneRank(ctx);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(kind_, ": ", e.what_without_backtrace()));
  }
}

}  // namespace gemma
