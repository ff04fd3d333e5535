// The `peft` job kind: LoRA / DoRA fine-tuning (model/lora.h) with the
// trainer of jobs/trainer.h. Adapters are attached per spec.peft to the base
// model in spec.model.path; only adapter parameters train. Checkpoints (and
// spec.output) are adapter checkpoints (adapter.json + adapter.safetensors)
// that name the base model; a retried attempt reloads the base and continues
// from the newest adapter checkpoint exactly as sft does. At the end,
// optionally: spec.peft.export_dir gets an HF PEFT adapter folder, and with
// spec.peft.merge the adapters are folded into the weights and the full model
// is written to <spec.output>/merged (our checkpoint + tokenizer.model).
#ifndef GEMMA_JOBS_PEFT_JOB_H_
#define GEMMA_JOBS_PEFT_JOB_H_

#include <memory>

#include "jobs/job.h"
#include "jobs/trainer.h"

namespace gemma {

std::unique_ptr<Job> NewPeftJob();

// The trainer options of a peft job for `spec` (hooks that attach, save and
// load the adapters); exposed for tests.
TrainerOptions PeftTrainerOptions(const gemma::v1::JobSpec& spec);

// After training: the export and merge spec.peft asks for. Every rank of the
// job calls it (collective over the world group).
absl::Status FinishPeft(Trainer& trainer, const gemma::v1::JobSpec& spec,
                        RankContext& ctx);

}  // namespace gemma

#endif  // GEMMA_JOBS_PEFT_JOB_H_
