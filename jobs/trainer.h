// The supervised fine-tuning loop shared by the `sft` and `peft` job kinds.
//
// One Trainer is one rank. It loads the model (spec.model.path: an HF folder,
// our checkpoint, or a training step folder to continue from), freezes
// spec.model.freeze parts, reads spec.data.train (and .eval) through
// data/batch.h, and runs optimizer steps:
//
//   step s: every DP rank fetches its micro batches (grad_accum of them), the
//   target tokens of the whole step are counted and summed over DP first,
//   then each micro batch's loss_sum / total_tokens is back-propagated
//   (model/loss.h CausalLmLoss over the final hidden states and the tied
//   embedding); gradients are summed over DP in flat ~25 MB buckets whose
//   reductions start during the last micro batch's backward
//   (jobs/grad_sync.h); gradients that are partial over the TP group (q/k
//   norms, sequence-parallel norms) are summed over TP first; the global
//   gradient norm (every element once over TP and DP) is clipped to
//   optim.grad_clip; AdamW steps with the schedule's rate (jobs/schedule.h),
//   its state sharded over the DP ranks with parallel.zero_stage 1 (the
//   default when dp > 1) or replicated with 0 (jobs/dist_optimizer.h).
//
// Tuning knobs for benchmarks and tests, read once at Create:
// GEMMA_GRAD_BUCKET_BYTES (bucket size, default 25 MiB) and
// GEMMA_GRAD_OVERLAP=0 (reduce all buckets after backward instead).
//
// Data parallelism: the global batch of a step is micro x accum x dp rows,
// cut in stream order; micro batch k of DP rank r is the (k * dp + r)-th
// micro batch of the stream, so dp ranks together see exactly the rows one
// rank with dp times the accumulation would see. (Each rank reads the whole
// stream and keeps its part: simple and deterministic; the decode cost is
// repeated per rank.)
//
// Checkpoints (jobs/train_state.h layout) every checkpoint.interval_steps and
// at the end. The TP group of DP rank 0 writes the model (one rank file per TP
// shard); the optimizer state goes in optimizer.safetensors (one file per TP
// shard with zero_stage 0) or in every rank's
// optimizer-rank-NNNNN.safetensors (world rank, zero_stage 1); world rank 0
// publishes the folder once every rank has written. Restore() puts weights,
// optimizer, schedule position, loader position and RNG back so the following
// steps compute the same losses, bit for bit on CPU, as an uninterrupted run.
//
// Not thread-safe; one trainer per thread (the recompute switch is
// thread-local).
#ifndef GEMMA_JOBS_TRAINER_H_
#define GEMMA_JOBS_TRAINER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "data/batch.h"
#include "data/prefetch.h"
#include "data/tokenizer.h"
#include "gemma/v1/job_spec.pb.h"
#include "jobs/dist_optimizer.h"
#include "jobs/grad_sync.h"
#include "jobs/job.h"
#include "jobs/schedule.h"
#include "jobs/train_model.h"
#include "jobs/train_state.h"
#include "model/comm.h"

namespace gemma {

struct StepStats {
  int64_t step = 0;          // optimizer steps done after this one
  double loss = 0;           // mean over the step's target tokens (all ranks)
  double accuracy = 0;       // token accuracy of the step (all ranks)
  int64_t tokens = 0;        // target tokens of the step (all ranks)
  int64_t input_tokens = 0;  // non-padding input tokens (all ranks)
  double lr = 0;             // rate used
  double grad_norm = 0;      // global norm before clipping
  double seconds = 0;
};

struct EvalStats {
  double loss = 0;      // mean per target token
  double accuracy = 0;  // token accuracy
  int64_t tokens = 0;
  int64_t batches = 0;
};

// Hooks for trainers built on this one (PEFT): called once after the model
// is loaded and frozen, before the optimizer is built. It may attach modules
// and change requires_grad; the trainable set is read afterwards.
using ModelHook = std::function<absl::Status(TrainModel& model)>;

struct TrainerOptions {
  gemma::v1::JobSpec spec;
  // tp and dp are used (rank = dp_index * tp + tp_index); single rank by
  // default. Under TP each rank holds its shard of the model (loaded from
  // any folder at any stored layout) and writes its shard of checkpoints.
  ParallelGroups groups;
  // Where step folders go; empty: spec.checkpoint.root, else
  // $TMPDIR/gemma-train/<job id> (job from `job`, "jobs/x" -> "x").
  std::string checkpoint_root;
  // Where the model and the step run: "cpu" or "cuda:N" (the worker's
  // device). Optimizer state lives there too; checkpoints go through the CPU.
  std::string device = "cpu";
  std::string job;  // jobs/{id}, for the default root and the state file
  ModelHook model_hook;
  // When set (adapter training), checkpoints and spec.output hold only what
  // save_model writes (with TrainState.base_model naming the base), and a
  // resume loads the base weights from that base and then calls
  // load_model. save_model returns the bytes written; load_model must fill
  // the existing trainable tensors (the optimizer holds them).
  std::function<absl::StatusOr<int64_t>(
      TrainModel& model, const std::string& dir, const TrainState& state)>
      save_model;
  std::function<absl::Status(TrainModel& model, const std::string& dir)>
      load_model;
};

class Trainer {
 public:
  // Loads model, tokenizer and data; restores the newest checkpoint under
  // the root (or spec.model.path when it is a step folder). Errors name the
  // spec field or file at fault.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(
      TrainerOptions options);

  // One optimizer step.
  absl::StatusOr<StepStats> Step();
  // Validation over spec.data.eval (optim.eval_batches batches, from the
  // start of the set each time). FailedPrecondition without data.eval.
  absl::StatusOr<EvalStats> Evaluate();
  // Writes the step folder of the current step under the root; returns its
  // path and bytes. Collective over DP (rank 0 writes).
  absl::StatusOr<std::pair<std::string, int64_t>> SaveCheckpoint();
  // Puts the state of step folder `dir` back (weights, optimizer, loader,
  // RNG, losses).
  absl::Status Restore(const std::string& dir);

  // The whole job: steps to max_steps with progress, validation and
  // checkpoints through `ctx`; the final model to spec.output. CANCELLED when
  // ctx asked to stop (after writing a checkpoint).
  absl::Status Run(RankContext& ctx);

  int64_t step() const { return state_.step; }
  int64_t max_steps() const { return schedule_.total_steps; }
  int grad_accum() const { return grad_accum_; }
  const TrainState& state() const { return state_; }
  const std::string& checkpoint_root() const { return root_; }
  TrainModel& model() { return *model_; }
  const ParallelGroups& groups() const { return options_.groups; }
  torch::nn::Module& module() { return model_->module(); }
  const std::string& config_json() const { return model_->config_json(); }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  // The trainable parameters by name.
  const std::vector<std::pair<std::string, at::Tensor>>& trainable() const {
    return trainable_;
  }

 private:
  explicit Trainer(TrainerOptions options);
  absl::Status Init();
  absl::Status LoadData();
  // Loss terms of one micro batch (forward only when !backward).
  struct MicroResult {
    at::Tensor loss_sum, tokens, correct;
  };
  MicroResult Forward(const Batch& batch);
  // Every rank gets OK, or the same error when any rank's `status` was not
  // OK (collective over the world group).
  absl::Status AgreeOverWorld(const absl::Status& status);
  // The model at this TP layout (every TP rank's shard, collective over TP)
  // and the tokenizer into `dir`. Returns this rank's bytes.
  absl::StatusOr<int64_t> WriteModel(const std::string& dir);
  // The TP group of DP rank 0's part of a step folder under construction:
  // the model shards and (zero_stage 0) this TP shard's optimizer file.
  // Returns the bytes.
  absl::StatusOr<int64_t> WriteCheckpointFiles(const std::string& tmp);
  // Loads the optimizer state of step folder `dir` (written at `step`);
  // returns the RNG state stored with it.
  absl::StatusOr<at::Tensor> RestoreOptimizer(const std::string& dir,
                                              int64_t step);
  absl::StatusOr<Batch> NextMicroBatch();
  // Batches are padded to a multiple of this (data.pad_to_multiple, and tp
  // under sequence parallelism).
  int SequenceMultiple() const;
  // This rank's optimizer file name inside a step folder.
  std::string OptimizerFile() const;

  TrainerOptions options_;
  const gemma::v1::JobSpec& spec_;
  std::string root_;
  std::string weights_dir_;  // the folder the weights were loaded from
  c10::Device device_{c10::kCPU};
  std::unique_ptr<TrainModel> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  // The training stream: the loader until the first step, then a
  // prefetcher owning it (batches prepared on a background thread).
  std::unique_ptr<DataLoader> train_loader_;
  std::unique_ptr<BatchPrefetcher> train_batches_;
  int64_t train_size_ = 0;
  LoaderPosition TrainPosition() const;
  std::vector<Conversation> eval_data_;
  std::vector<std::pair<std::string, at::Tensor>> trainable_;
  int zero_stage_ = 0;
  // Replicated and TP parameters, reduced over DP.
  std::unique_ptr<GradSync> grad_sync_;
  std::unique_ptr<DistOptimizer> optimizer_;
  // Expert parameters under expert parallelism (GradKind::kExpert), reduced
  // over the expert-data-parallel group; null without them.
  std::unique_ptr<GradSync> expert_sync_;
  std::unique_ptr<DistOptimizer> expert_optimizer_;
  // Both optimizers' gradient norm (every element once) and clipping.
  double ClipGradNorm(double max_norm);
  int tp_size() const { return options_.groups.tp->size(); }
  int tp_rank() const { return options_.groups.tp->rank(); }
  // Optimizer file names of this rank (zero_stage 0: written by DP rank 0's
  // TP group; expert state by every EP rank of the first EDP replica).
  std::string ExpertOptimizerFile() const;
  LrSchedule schedule_;
  int grad_accum_ = 1;
  at::ScalarType dtype_;
  TrainState state_;
};

}  // namespace gemma

#endif  // GEMMA_JOBS_TRAINER_H_
