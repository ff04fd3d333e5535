// Gradient synchronisation over data parallelism, overlapped with backward.
//
// GradSync owns the gradients of the trainable parameters: one flat buffer
// per dtype, every parameter's .grad() a view into it, so autograd's
// AccumulateGrad adds into the buffer in place across the micro batches of a
// step and zeroing the gradients is zeroing the buffers. The buffers are cut
// into buckets of ~bucket_bytes laid out in REVERSE parameter order (backward
// produces gradients roughly last layer first), each padded to a multiple of
// dp elements so it splits into dp equal contiguous segments; DP rank r owns
// segment r of every bucket (ZeRO-1, jobs/dist_optimizer.h).
//
// During the backward of a step's last micro batch a post hook on each
// parameter's gradient accumulator (the AccumulateGrad node, as PyTorch's
// DDP reducer does) marks the parameter ready; when every parameter of a
// bucket is ready the bucket's reduction starts asynchronously (an
// all-reduce, or with `shard` a reduce-scatter into the owned segment).
// Buckets start strictly in bucket order (a bucket only after every earlier
// one), so every rank issues the same collectives in the same order.
// FinishBackward() starts the buckets still waiting (parameters that got no
// gradient this step: unused or frozen paths never deadlock) and waits.
//
//   GradSync sync(params, groups, {});
//   sync.ZeroGrad();
//   for (k = 0; k < accum; ++k) {
//     sync.BeginBackward(/*last=*/k == accum - 1);
//     loss_k.backward();
//   }
//   sync.FinishBackward();  // reduced gradients in place
//
// Tensor parallelism: a parameter flagged tp_partial holds a partial sum of
// its gradient on each TP rank (sequence-parallel norm weights). Such
// parameters get buckets of their own at the end of the bucket order; at
// FinishBackward those buckets are all-reduced over the TP group first, then
// reduced over DP like the others. tp_sharded / replicated only matter for
// the gradient norm (jobs/dist_optimizer.h).
//
// Not thread-safe, except that the hooks may run on autograd's threads
// (guarded by mu_). One GradSync per parameter set: it installs hooks on the
// parameters' accumulators and removes them when destroyed.
#ifndef GEMMA_JOBS_GRAD_SYNC_H_
#define GEMMA_JOBS_GRAD_SYNC_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "model/comm.h"

namespace torch::autograd {
struct Node;
}

namespace gemma {

// A trainable parameter and how tensor parallelism holds it.
struct TrainParam {
  std::string name;
  at::Tensor param;
  // Each TP rank holds a different slice: its squared norm counts on every
  // TP rank. Otherwise the parameter is replicated over TP and counts once.
  bool tp_sharded = false;
  // The gradient is a partial sum over the TP ranks: all-reduced over TP
  // before anything else.
  bool tp_partial = false;
  // Elements [begin, end) of the flattened parameter that another TP rank
  // holds too (a replicated KV head's rows on all but its first replica):
  // left out of this rank's share of the gradient norm so they count once.
  std::pair<int64_t, int64_t> norm_skip = {0, 0};
};

// Where parameters sit in the flat buffers. Pure function of the parameter
// list (order, shapes, dtypes, flags), bucket_bytes and dp: identical on
// every rank.
class BucketLayout {
 public:
  struct Bucket {
    int buffer = 0;       // index into dtypes()
    int64_t offset = 0;   // first element in its buffer
    int64_t numel = 0;    // elements, padding included (multiple of dp)
    int64_t segment = 0;  // numel / dp: the part each DP rank owns
    bool tp_partial = false;
    std::vector<int> params;  // indices into the parameter list, in layout
                              // order (decreasing parameter index)
  };
  struct Slot {
    int bucket = 0;
    int64_t offset = 0;  // first element in its buffer
    int64_t numel = 0;
  };
  // The part of parameter `param` inside a range of a bucket.
  struct Piece {
    int param = 0;
    int64_t param_offset = 0;   // first element within the parameter
    int64_t buffer_offset = 0;  // first element within the buffer
    int64_t numel = 0;
  };

  BucketLayout(const std::vector<TrainParam>& params, int64_t bucket_bytes,
               int dp);

  int dp() const { return dp_; }
  const std::vector<at::ScalarType>& dtypes() const { return dtypes_; }
  const std::vector<int64_t>& buffer_numel() const { return buffer_numel_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  const std::vector<Slot>& slots() const { return slots_; }
  // Offset in its buffer of rank r's segment of bucket b.
  int64_t SegmentOffset(int b, int rank) const {
    return buckets_[b].offset + rank * buckets_[b].segment;
  }
  // The parameter pieces inside rank r's segment of bucket b, in buffer
  // order (padding is in no piece).
  std::vector<Piece> SegmentPieces(int b, int rank) const;
  // New zeroed flat buffers on `device`, one per dtype (indexed like dtypes()).
  std::vector<at::Tensor> NewBuffers(const at::Device& device) const;
  // Parameter i's slot in `buffers` (from NewBuffers), viewed as `sizes`.
  at::Tensor SlotView(const std::vector<at::Tensor>& buffers, size_t i,
                      at::IntArrayRef sizes) const;

 private:
  int dp_;
  std::vector<at::ScalarType> dtypes_;
  std::vector<int64_t> buffer_numel_;
  std::vector<Bucket> buckets_;
  std::vector<Slot> slots_;
};

struct GradSyncOptions {
  int64_t bucket_bytes = 25 << 20;
  // Start bucket reductions from the backward hooks; false: all of them at
  // FinishBackward (same results, no overlap; for comparisons).
  bool overlap = true;
  // Reduce-scatter (each DP rank gets the sum of its own segments only)
  // instead of all-reduce.
  bool shard = false;
};

class GradSync {
 public:
  // The parameters must be distinct leaf tensors requiring grad, all on one
  // device. Makes their .grad() views into the buffers (zeroed) and installs
  // the hooks. The groups' tp and dp communicators are used.
  GradSync(std::vector<TrainParam> params, const ParallelGroups& groups,
           GradSyncOptions options);
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  const std::vector<TrainParam>& params() const { return params_; }
  const BucketLayout& layout() const { return layout_; }
  const GradSyncOptions& options() const { return options_; }
  const ParallelGroups& groups() const { return groups_; }
  int dp_rank() const { return groups_.dp->rank(); }

  // Zeroes the buffers, points every .grad() at its view again (in case
  // someone reset it) and forgets the last step. Call before the first
  // backward of a step. Collectives of a step abandoned by an error are
  // dropped, not waited for.
  void ZeroGrad();
  // Call before each backward of the step; `last` for its last micro batch
  // (the one whose hooks start reductions).
  void BeginBackward(bool last);
  // After the last backward: starts the remaining buckets in order, then the
  // TP-partial ones, and the DP exchange of which parameters got gradients;
  // waits for everything. Afterwards ReducedGrad(b) holds the sums. Throws
  // c10::Error when a collective fails (or the group was aborted).
  void FinishBackward();

  // Whether parameter i got a gradient this step on any DP rank (valid after
  // FinishBackward). Parameters that did not are left out of the update, as
  // torch.optim skips parameters whose grad is None.
  bool used(int i) const { return used_[i] != 0; }
  // The flat gradient buffer of dtypes()[buffer].
  const at::Tensor& buffer(int i) const { return buffers_[i]; }
  // The whole of bucket b in its buffer.
  at::Tensor BucketGrad(int b) const;
  // The reduced part of bucket b on this rank: its own segment when sharded,
  // else the whole bucket.
  at::Tensor ReducedGrad(int b) const;
  // How many buckets were started from hooks during the last backward
  // (the rest at FinishBackward); for tests and benchmarks.
  int launched_early() const { return launched_early_; }

 private:
  class ReadyHook;
  void MarkReady(int param);
  void LaunchReadyLocked();
  void Launch(int b);

  // Constant after construction.
  const std::vector<TrainParam> params_;
  const ParallelGroups groups_;
  const GradSyncOptions options_;
  const BucketLayout layout_;
  std::vector<at::Tensor> buffers_;  // per dtype
  std::vector<at::Tensor> views_;    // per parameter, into buffers_
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
  std::vector<uintptr_t> hook_keys_;

  std::mutex mu_;       // guards the step state below against autograd threads
  bool armed_ = false;  // last micro batch: hooks launch
  std::vector<uint8_t> ready_;       // per parameter, this step
  std::vector<int> pending_;         // per bucket: parameters not ready
  std::vector<int32_t> used_local_;  // per parameter: got a gradient here
  int next_launch_ = 0;              // buckets [0, next_launch_) started
  int launched_early_ = 0;
  std::vector<std::shared_ptr<CommWork>> works_;

  std::vector<int32_t> used_;  // after FinishBackward: used on any DP rank
};

}  // namespace gemma

#endif  // GEMMA_JOBS_GRAD_SYNC_H_
