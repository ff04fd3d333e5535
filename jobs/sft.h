// The `sft` job kind: full supervised fine-tuning of a Gemma 3 (VL) model
// with jobs/trainer.h. Reads spec.model, spec.data, spec.optim and
// spec.checkpoint; reports progress every optim.log_interval_steps (loss,
// accuracy, lr, grad_norm, tokens_per_s; eval_loss / eval_accuracy at
// validation steps), registers every checkpoint with the catalog
// (ctx.checkpoint), and writes the final model (our sharded checkpoint plus
// tokenizer.model) to spec.output. A retried attempt continues from the
// newest complete checkpoint under the job's checkpoint root.
#ifndef GEMMA_JOBS_SFT_H_
#define GEMMA_JOBS_SFT_H_

#include <memory>

#include "jobs/job.h"

namespace gemma {

std::unique_ptr<Job> NewSftJob();

}  // namespace gemma

#endif  // GEMMA_JOBS_SFT_H_
