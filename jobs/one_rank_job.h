// The base of the job kinds that run as one rank (convert, eval, generate).
#ifndef GEMMA_JOBS_ONE_RANK_JOB_H_
#define GEMMA_JOBS_ONE_RANK_JOB_H_

#include <string>

#include "absl/status/status.h"
#include "jobs/job.h"

namespace gemma {

// Run refuses an attempt of more than one rank (INVALID_ARGUMENT "<kind> runs
// as one rank (world N)<world_hint>") and turns a LibTorch error thrown by
// RunOneRank into INTERNAL "<kind>: <what>", so that Run never throws.
class OneRankJob : public Job {
 public:
  // `kind` names the job in errors ("eval"); `world_hint` ends the error of a
  // world of more than one rank (e.g. "; set convert.tp").
  explicit OneRankJob(std::string kind, std::string world_hint = "")
      : kind_(std::move(kind)), world_hint_(std::move(world_hint)) {}

  absl::Status Run(RankContext& ctx) final;

 protected:
  // The job's work on its one rank; may throw c10::Error.
  virtual absl::Status RunOneRank(RankContext& ctx) = 0;

 private:
  const std::string kind_;
  const std::string world_hint_;
};

}  // namespace gemma

#endif  // GEMMA_JOBS_ONE_RANK_JOB_H_
