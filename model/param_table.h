// The one table of our parameter names (see /work/briefs/MODEL_NAMES.md) and
// their tensor-parallel split rules, plus exact byte-level slicing of a
// global tensor into a rank's shard and assembling shards back.
//
// A tensor is handled as a 2-D byte matrix [rows = shape[0], cols = numel /
// shape[0]] (a 1-D tensor has one column; a scalar is [1, 1]). Every split rule
// cuts either dim 0 (rows) or dim 1 (columns of a 2-D weight) into one or more
// index ranges; the shard is those ranges concatenated in order.
//
//   GEMMA_ASSIGN_OR_RETURN(ParamSpec spec,
//   LookupParam("text.layers.3.mlp.gate_up.weight"));
//   GEMMA_ASSIGN_OR_RETURN(ShardLayout l, ComputeShard(spec, {2 * I, H}, dims,
//   tp, rank)); CopyShard(VirtualTensor::Contiguous(bytes, {2 * I, H}, 2), l,
//   dst);
#ifndef GEMMA_MODEL_PARAM_TABLE_H_
#define GEMMA_MODEL_PARAM_TABLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gemma {

enum class SplitKind {
  kReplicated,  // every rank holds the whole tensor
  kRows,        // dim 0 split evenly (text qkv: whole KV groups)
  kRowBlocks,   // dim 0 = `blocks` equal blocks, each split evenly (gate_up)
  kCols,        // dim 1 split evenly (row-parallel o, down)
  kVocabRows,   // dim 0 split evenly after padding up to a multiple of tp
                // (embed)
  kExperts,     // MoE experts [E, ...]: dim 0 split evenly over EP ranks,
                // replicated over TP (Gemma 4 TP is not built yet)
};

struct ParamSpec {
  std::string name;     // the concrete name looked up
  std::string pattern;  // table entry, layers as {i}
                        // ("text.layers.{i}.attn.qkv.weight")
  SplitKind split = SplitKind::kReplicated;
  int blocks = 1;          // kRowBlocks only
  bool kv_groups = false;  // kRows: the split must fall on KV-group boundaries
};

// The table, in a stable order.
const std::vector<ParamSpec>& ParamTable();
// The spec of `name`; NOT_FOUND for a name outside the contract.
absl::StatusOr<ParamSpec> LookupParam(absl::string_view name);

// What ComputeShard needs from the model config.
struct ShardDims {
  int64_t num_kv_heads = 1;  // text KV groups (qkv split granularity)
};

// Rank `rank`'s shard of a global tensor: along `dim`, these [begin, end)
// global index ranges concatenated. For kVocabRows the last range may run past
// shape[0]: those rows are zero padding.
struct ShardLayout {
  int dim = 0;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  std::vector<int64_t> shard_shape;
  int64_t padded_rows = 0;  // kVocabRows: rows added to reach a multiple of tp
};

// INVALID_ARGUMENT (naming the tensor) when the tensor cannot be split `tp`
// ways (e.g. KV heads not divisible by tp, odd block sizes).
absl::StatusOr<ShardLayout> ComputeShard(const ParamSpec& spec,
                                         const std::vector<int64_t>& shape,
                                         const ShardDims& dims, int tp,
                                         int rank);

// A checkpoint's (or a job's) shard layout: tp x ep ranks, numbered
// rank = ep_index * tp + tp_index. Tensors other than kExperts are split over
// TP by their rule and replicated over EP; kExperts are split over EP (rank
// i owns experts [i E / ep, (i + 1) E / ep), as model/moe.h slices them) and
// replicated over TP.
struct CheckpointLayout {
  int tp = 1;
  int ep = 1;
  int world() const { return tp * ep; }
  int tp_index(int rank) const { return rank % tp; }
  int ep_index(int rank) const { return rank / tp; }
};

// Rank `rank`'s shard in `layout` (ComputeShard's TP split, or the EP split
// for kExperts). INVALID_ARGUMENT naming the tensor when it cannot be split,
// e.g. E not divisible by ep.
absl::StatusOr<ShardLayout> ComputeLayoutShard(
    const ParamSpec& spec, const std::vector<int64_t>& shape,
    const ShardDims& dims, const CheckpointLayout& layout, int rank);

// Whether a checkpoint in `layout` keeps rank `rank`'s shard of `spec` in that
// rank's file. A replica is stored once per layout: tensors replicated over
// EP live in the files of ep_index 0 only, experts (replicated over TP) in the
// files of tp_index 0 only. With ep = 1 every rank stores its TP shard (the
// Gemma 3 format, unchanged).
bool StoresShard(const ParamSpec& spec, const CheckpointLayout& layout,
                 int rank);

// A tensor's bytes gathered from pieces that need not be contiguous: each
// block covers the global rectangle rows [row0, row1) x cols [col0, col1) of
// the 2-D byte view, and element (r, c) sits at
// base + (r - row0) * row_stride + (c - col0) * elem_size. Holds pointers only.
struct VirtualTensor {
  struct Block {
    int64_t row0, row1, col0, col1;
    const uint8_t* base;
    int64_t row_stride;  // bytes
  };
  std::vector<int64_t> shape;
  size_t elem_size = 0;
  std::vector<Block> blocks;

  int64_t rows() const;
  int64_t cols() const;
  // One contiguous buffer holding the whole tensor.
  static VirtualTensor Contiguous(const uint8_t* data,
                                  std::vector<int64_t> shape, size_t elem_size);
  // Adds `nrows` full rows starting at global row `row0` from `data`.
  void AddRows(int64_t row0, int64_t nrows, const uint8_t* data);
  // Adds a shard of `layout` held contiguously at `data` (the inverse of
  // CopyShard).
  void AddShard(const ShardLayout& layout, const uint8_t* data);
};

// Asks the kernel to start reading the pages of `src` that `layout` needs
// (madvise WILLNEED; for memory-mapped sources, a no-op hint otherwise), so
// disk reads overlap the copy of the previous tensor.
void Prefetch(const VirtualTensor& src, const ShardLayout& layout);

// Bytes of the shard described by `layout`.
int64_t ShardBytes(const ShardLayout& layout, size_t elem_size);

// Copies the shard `layout` of `src` to `dst` (ShardBytes bytes, row-major
// shard). Padding rows are zeroed. INTERNAL when `src` lacks a needed element.
absl::Status CopyShard(const VirtualTensor& src, const ShardLayout& layout,
                       uint8_t* dst);

// Copies rows `ranges` (dim 0, concatenated) of `src` to `dst`.
absl::Status CopyRows(const VirtualTensor& src,
                      const std::vector<std::pair<int64_t, int64_t>>& ranges,
                      uint8_t* dst);

}  // namespace gemma

#endif  // GEMMA_MODEL_PARAM_TABLE_H_
