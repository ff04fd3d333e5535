// AdamW over data parallelism, with the optimizer state replicated (ZeRO
// stage 0) or sharded across the DP ranks (ZeRO stage 1), on the gradients a
// GradSync (jobs/grad_sync.h) reduced.
//
// Stage 1: DP rank r owns segment r of every gradient bucket (the r-th
// contiguous 1/dp, padding included). The GradSync reduce-scatters, so only
// the owned segments hold summed gradients; this class keeps AdamW's moments
// (and, for non-fp32 parameters, the fp32 master copy) of the owned segments
// only, updates them with the same per-element code as jobs/optimizer.h's
// AdamW (AdamWUpdate, piece by piece: a piece of a parameter keeps that
// parameter's weight-decay flag), and all-gathers the updated values. To let
// the all-gather land in place, the parameters become views into a flat
// parameter buffer laid out like the gradient buffer (param.set_data()).
// Results equal the unsharded AdamW's to the bit given the same gradients.
//
// Stage 0: every DP rank runs jobs/optimizer.h's AdamW over the whole
// (all-reduced) gradients.
//
// Gradient norm, both stages alike (so they agree to the bit): each DP rank
// sums the squares of its owned segments, then the sums are added over DP and
// then over TP. A parameter flagged tp_sharded counts on every TP rank (each
// holds another slice); any other counts on TP rank 0 only (replicated).
//
// Checkpoints (stage 1): each rank writes its own shard file,
// optimizer-rank-NNNNN.safetensors (world rank), holding its segments and,
// as safetensors metadata, the layout (dp, buckets, parameter names, shapes,
// offsets) that a restore checks against its own before loading.
//
// Not thread-safe.
#ifndef GEMMA_JOBS_DIST_OPTIMIZER_H_
#define GEMMA_JOBS_DIST_OPTIMIZER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "jobs/grad_sync.h"
#include "jobs/optimizer.h"

namespace gemma {

struct DistOptimizerOptions {
  AdamWOptions adamw;
  int zero_stage = 1;  // 0: state replicated on every DP rank; 1: sharded
};

class DistOptimizer {
 public:
  // `grads` gives the parameters, their layout and reduced gradients; it
  // must outlive this and shard exactly when zero_stage == 1 (checked).
  // Stage 1 moves the parameters' values into the flat parameter buffer.
  DistOptimizer(GradSync& grads, DistOptimizerOptions options);

  // The global L2 norm of the reduced gradients (see above); when
  // max_norm > 0 also scales them by min(1, max_norm / (norm + 1e-6)), as
  // torch.nn.utils.clip_grad_norm_. Collective over DP and TP.
  double ClipGradNorm(double max_norm);
  // The two halves of ClipGradNorm, for callers that combine several
  // optimizers into one norm (expert parallelism): the squared norm of this
  // optimizer's gradients (collective over DP and TP, as above), and scaling
  // the reduced gradients by `coef`.
  double GradSquaredNorm();
  void ScaleGrads(double coef);
  // One AdamW step with rate `lr` on the parameters that got a gradient on
  // some DP rank this step (GradSync::used); stage 1 then all-gathers the
  // parameters (collective over DP).
  void Step(double lr);

  int zero_stage() const { return options_.zero_stage; }
  int64_t steps() const;
  // Bytes of optimizer state this rank holds (moments and fp32 masters).
  int64_t StateBytes() const;

  // The state to checkpoint. Stage 0: AdamW::StateTensors() (identical on
  // every DP rank). Stage 1: this rank's segments, "bucket/<b>/exp_avg",
  // "bucket/<b>/exp_avg_sq" and, for non-fp32 buckets, "bucket/<b>/master".
  std::map<std::string, at::Tensor> StateTensors() const;
  // Restores what StateTensors() gave at `steps`. InvalidArgument naming
  // the tensor that is missing or shaped differently; nothing changes then.
  absl::Status LoadState(const std::map<std::string, at::Tensor>& state,
                         int64_t steps);

  // Stage 1 files. The shard file name of a world rank.
  static std::string ShardFileName(int world_rank);
  // Writes StateTensors() plus `extra` (e.g. an RNG state) and the layout
  // metadata to `path` atomically; returns the bytes of tensors written.
  absl::StatusOr<int64_t> WriteShard(
      const std::string& path,
      const std::map<std::string, at::Tensor>& extra) const;
  // Reads a file WriteShard wrote, refuses it (FailedPrecondition naming
  // `path` and what differs) unless its layout is this run's, restores the
  // state at `steps` and returns the other tensors it holds (`extra`).
  absl::StatusOr<std::map<std::string, at::Tensor>> ReadShard(
      const std::string& path, int64_t steps);

 private:
  // The owned segment of one bucket (stage 1).
  struct Shard {
    at::Tensor param;   // view of the parameter buffer
    at::Tensor master;  // fp32; == param for fp32 buckets
    at::Tensor exp_avg, exp_avg_sq;
    std::vector<BucketLayout::Piece> pieces;
    std::vector<bool> decay;  // per piece
  };
  // A range of a bucket's owned segment whose squares count in the norm.
  struct Run {
    int64_t offset = 0;  // within the segment
    int64_t numel = 0;
  };
  at::Tensor SegmentGrad(int b) const;
  std::string LayoutJson() const;

  GradSync& grads_;
  const DistOptimizerOptions options_;
  const int dp_rank_;
  std::vector<std::vector<Run>> runs_;  // per bucket
  // Stage 0.
  std::unique_ptr<AdamW> adamw_;
  // Stage 1.
  std::vector<at::Tensor> param_buffers_;  // per dtype, like the gradients'
  std::vector<Shard> shards_;              // per bucket
  int64_t steps_ = 0;
};

}  // namespace gemma

#endif  // GEMMA_JOBS_DIST_OPTIMIZER_H_
