// How one Projection's (model/layers.h) weight is split over a
// tensor-parallel group, said by the model that shards it (Megatron-Core's
// ColumnParallelLinear / RowParallelLinear), so that what sits on the
// projection (LoRA adapters, model/lora.h) can split itself the same way and
// gather itself back whole.
//
//   column-parallel (qkv / qk, gate_up): the weight's ROWS are split; the
//     input is replicated (after CopyToTpRegion), each rank computes its rows
//     of the output.
//   row-parallel (o, down): the weight's COLUMNS are split; each rank gets its
//     columns of the input and computes a partial output, which the layer's
//     ReduceFromTpRegion sums.
//
// A rank's shard along the split dimension is a list of [begin, end) ranges
// of the global indices, concatenated in order (gate_up: a range of the gate
// block, then one of the up block). Ranges of different ranks may overlap:
// Gemma 4 attention with fewer KV heads than ranks holds each KV head's rows
// on several ranks (replicas). Every rank knows every rank's ranges, so
// gathering needs no metadata exchange.
//
// The collectives (GatherSplit, SumReplicas) follow model/comm.h's contract:
// every rank of the group calls them in the same order with shards of the
// same shape. They move tensors to comm->device() and back.
#ifndef GEMMA_MODEL_PROJECTION_SPLIT_H_
#define GEMMA_MODEL_PROJECTION_SPLIT_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "model/comm.h"

namespace gemma {

struct ProjectionSplit {
  enum class Kind { kNone, kColumn, kRow };
  using Ranges = std::vector<std::pair<int64_t, int64_t>>;

  Kind kind = Kind::kNone;
  std::shared_ptr<Comm> comm;  // the TP group (null for kNone)
  int64_t out = 0, in = 0;     // the whole weight's shape [out, in]
  // Indexed by TP rank: the global rows (kColumn) or columns (kRow) of that
  // rank's shard.
  std::vector<Ranges> ranges;

  bool split() const { return kind != Kind::kNone; }
  // The weight dimension that is split: 0 (rows) or 1 (columns).
  int64_t dim() const { return kind == Kind::kColumn ? 0 : 1; }
  int rank() const { return comm ? comm->rank() : 0; }
  // Whether some global index is held by more than one rank.
  bool has_replicas() const;
};

// Column-parallel: rank r holds rows ranges[r] of a [out, in] weight.
ProjectionSplit ColumnSplit(std::shared_ptr<Comm> comm, int64_t out, int64_t in,
                            std::vector<ProjectionSplit::Ranges> ranges);
// Column-parallel over `blocks` equal row blocks, each split evenly: rank r
// holds rows [b B + r B / n, b B + (r + 1) B / n) of every block b (B = out /
// blocks). One block: plain even rows (Gemma 3 qkv); two: gate_up.
ProjectionSplit ColumnBlocksSplit(std::shared_ptr<Comm> comm, int64_t out,
                                  int64_t in, int64_t blocks = 1);
// Row-parallel: rank r holds columns [r in / n, (r + 1) in / n).
ProjectionSplit RowSplit(std::shared_ptr<Comm> comm, int64_t out, int64_t in);

// This rank's shard of `whole` along `dim` (whose size is the split
// dimension's global size): the ranges' slices concatenated. Without a split,
// `whole` itself.
at::Tensor ShardOf(const ProjectionSplit& split, const at::Tensor& whole,
                   int64_t dim);

// Collective: the whole tensor from every rank's `shard` (split along `dim`
// as ShardOf cuts it), on the CPU. Indices held by several ranks are taken
// from the lowest rank (replicas are equal). Without a split, a CPU copy of
// `shard`.
at::Tensor GatherSplit(const ProjectionSplit& split, const at::Tensor& shard,
                       int64_t dim);

// Collective: `grad` (a gradient of a shard split along dim 0 of a kColumn
// split) with the rows held by several ranks replaced by their sum over
// those ranks; other rows unchanged. Only the replicated rows travel. For
// gradient hooks of replicated rows (Gemma 4 KV heads: on the weight and on
// LoRA B).
at::Tensor SumReplicas(const ProjectionSplit& split, const at::Tensor& grad);

// The global indices held by more than one rank, as sorted disjoint ranges.
ProjectionSplit::Ranges ReplicatedRanges(const ProjectionSplit& split);

// This rank's local positions (offsets into its shard along the split
// dimension) of the indices a LOWER rank holds too, as sorted disjoint
// ranges: what this rank leaves out when every index must count once (the
// gradient norm).
ProjectionSplit::Ranges LowerRankCopies(const ProjectionSplit& split);

}  // namespace gemma

#endif  // GEMMA_MODEL_PROJECTION_SPLIT_H_
