// The `eval` job kind: how good a model is on a dataset.
//
//   * Teacher-forced: the dataset (spec.data.eval, else spec.data.train; JSONL
//     or CORD folder per data.format) in file order through the DataLoader
//     (no shuffle, right padding, batches of data.batch_size, default 4;
//     seq_len default 2048; every conversation once, at most eval.max_batches
//     batches), decoder hidden states through model/loss.h CausalLmLoss:
//     loss (mean -log p over target tokens: the model turns and their
//     <end_of_turn>), perplexity = exp(loss), token accuracy (argmax hits).
//   * Generation (eval.generate_examples > 0): the first N conversations that
//     have a model turn; prompt = the conversation up to its last model turn,
//     reference = that turn's text; greedy, KV cache, images, at most
//     eval.max_new_tokens (default 128); exact match, CER and field F1 as
//     data/metrics.h defines them.
// model.path may be a PEFT adapter checkpoint (jobs/generate_job.h
// LoadJobModel). The report (JSON) goes to eval.report, else spec.output, else
// <checkpoint.root>/eval.json (temp name, then rename); the numbers are also
// the job's final progress metrics (eval_loss, eval_perplexity,
// eval_token_accuracy, eval_exact_match, eval_cer, eval_field_f1, ...).
#ifndef GEMMA_JOBS_EVAL_H_
#define GEMMA_JOBS_EVAL_H_

#include <memory>

#include "jobs/job.h"

namespace gemma {

std::unique_ptr<Job> NewEvalJob();

}  // namespace gemma

#endif  // GEMMA_JOBS_EVAL_H_
