// The `convert` job kind: one rank converts between Hugging Face folders and
// our sharded checkpoints (model/convert.h does the work):
//   convert.to = "ours" (default): an HF folder -> our checkpoint at
//   convert.tp,
//                or our checkpoint -> our checkpoint at another TP (reshard);
//   convert.to = "hf": our checkpoint -> an HF folder transformers loads.
// Progress is reported in bytes (step = bytes done, total = bytes to write);
// the last log line gives the bytes/s. The output folder appears only when
// complete (written under a temporary name, then renamed).
#ifndef GEMMA_JOBS_CONVERT_H_
#define GEMMA_JOBS_CONVERT_H_

#include <memory>

#include "jobs/job.h"

namespace gemma {

std::unique_ptr<Job> NewConvertJob();

}  // namespace gemma

#endif  // GEMMA_JOBS_CONVERT_H_
