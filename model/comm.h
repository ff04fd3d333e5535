// The collectives a model shard and a trainer need, independent of the
// transport. worker/comm.h builds them on LibTorch's c10d (NCCL on GPUs, Gloo
// on CPUs) from the attempt's layout; SingleRankComm is the one-rank case, so
// the same code runs unchanged without a process group.
//
// Contract: every rank of the group calls the same collectives in the same
// order with tensors of the same shape and dtype; calls block until the
// result is in place. Failures (a peer died, the group was aborted) throw
// c10::Error; after Abort() every pending and later call throws instead of
// hanging.
//
// The *Async collectives start the operation and return a CommWork; the
// result is in place only after its Wait() returned. They count in the
// order of calls like the blocking ones (a rank must issue async and
// blocking collectives of one group in the same order as its peers). Until
// Wait() returns, the caller must neither read nor write the tensors passed
// in, and must keep them alive.
#ifndef GEMMA_MODEL_COMM_H_
#define GEMMA_MODEL_COMM_H_

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

namespace gemma {

// A started collective. Not thread-safe (one waiter).
class CommWork {
 public:
  virtual ~CommWork() = default;
  // Blocks until the collective is done and its result in place; throws
  // c10::Error when it failed, or when the group was aborted (before or
  // while waiting) instead of hanging. Calling it again after it returned
  // returns at once (or throws again).
  virtual void Wait() = 0;
};

// A CommWork that is already done (what the default *Async give).
class DoneCommWork : public CommWork {
 public:
  void Wait() override {}
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: t = sum over ranks of t.
  virtual void AllReduceSum(at::Tensor& t) = 0;
  // In place: t = max over ranks of t.
  virtual void AllReduceMax(at::Tensor& t) = 0;
  // Concatenation of every rank's `t` along `dim` (rank order).
  virtual at::Tensor AllGather(const at::Tensor& t, int64_t dim) = 0;
  // In place: t = root's t.
  virtual void Broadcast(at::Tensor& t, int root) = 0;
  // `t` split along dim 0 into size() equal parts; returns the sum over ranks
  // of part rank() (reduce-scatter).
  virtual at::Tensor ReduceScatterSum(const at::Tensor& t) = 0;
  // Sends inputs[r] to rank r and returns what each rank sent here (sizes may
  // differ; all-to-all with variable splits along dim 0).
  virtual std::vector<at::Tensor> AllToAll(
      const std::vector<at::Tensor>& inputs) = 0;
  virtual void Barrier() = 0;

  // Async in place: t = sum over ranks of t (t contiguous).
  virtual std::shared_ptr<CommWork> AllReduceSumAsync(at::Tensor& t) {
    AllReduceSum(t);
    return std::make_shared<DoneCommWork>();
  }
  // Async reduce-scatter: `output` = the sum over ranks of part rank() of
  // `input` (1-D, contiguous, numel a multiple of size(), `output` of numel /
  // size()). `output` may be that very part of `input` (in place). The
  // contents of the rest of `input` are unspecified afterwards (a backend may
  // reduce all of it in place).
  virtual std::shared_ptr<CommWork> ReduceScatterSumAsync(at::Tensor& input,
                                                          at::Tensor& output) {
    at::Tensor part = ReduceScatterSum(input);
    output.copy_(part);
    return std::make_shared<DoneCommWork>();
  }
  // Async all-gather: `output` (1-D, contiguous, size() x input's numel) =
  // the concatenation of every rank's `input` (rank order). `input` may be
  // part rank() of `output` (in place).
  virtual std::shared_ptr<CommWork> AllGatherIntoAsync(const at::Tensor& input,
                                                       at::Tensor& output) {
    at::Tensor all = AllGather(input.reshape({-1}), 0);
    output.copy_(all);
    return std::make_shared<DoneCommWork>();
  }

  // Makes pending and later collectives fail instead of waiting for peers.
  virtual void Abort() {}
  virtual std::string backend() const = 0;  // "gloo", "nccl", "single"
  // Where the tensors of this group's collectives must live (the GPU for
  // NCCL, the CPU otherwise).
  virtual c10::Device device() const { return c10::Device(c10::kCPU); }
};

// The one-rank group: every collective is the identity.
class SingleRankComm : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void AllReduceSum(at::Tensor&) override {}
  void AllReduceMax(at::Tensor&) override {}
  at::Tensor AllGather(const at::Tensor& t, int64_t) override { return t; }
  void Broadcast(at::Tensor&, int) override {}
  at::Tensor ReduceScatterSum(const at::Tensor& t) override { return t; }
  std::vector<at::Tensor> AllToAll(
      const std::vector<at::Tensor>& inputs) override {
    return inputs;
  }
  void Barrier() override {}
  std::string backend() const override { return "single"; }
};

// The groups of one rank in a tp x dp layout; ep re-slices the same ranks.
// Ranks are laid out TP-fastest: rank = dp_index * tp + tp_index. The EP
// group of a rank is the `ep` consecutive ranks of the world that share one
// set of experts between them (rank / ep picks the group, rank % ep is the
// rank in it): with tp = 1 these are ep data-parallel replicas; with tp > 1
// the group spans TP groups (Megatron's MoE parallel folding: each TP rank
// routes its share of its group's tokens, model/moe.h). The
// expert-data-parallel group (edp) joins the ranks that hold the SAME
// experts (same rank % ep, world / ep of them): expert gradients are summed
// over it, as the dense ones over dp.
struct ParallelGroups {
  std::shared_ptr<Comm> world = std::make_shared<SingleRankComm>();
  std::shared_ptr<Comm> tp = std::make_shared<SingleRankComm>();
  std::shared_ptr<Comm> dp = std::make_shared<SingleRankComm>();
  std::shared_ptr<Comm> ep = std::make_shared<SingleRankComm>();
  std::shared_ptr<Comm> edp = std::make_shared<SingleRankComm>();

  // Whether this rank writes part of the model into a checkpoint: the first
  // max(tp, ep) ranks of the world (the TP group of DP replica 0 and the
  // first EP group) hold every TP shard and every expert slice between them.
  bool writes_model() const {
    return world->rank() < std::max(tp->size(), ep->size());
  }
};

}  // namespace gemma

#endif  // GEMMA_MODEL_COMM_H_
