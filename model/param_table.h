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
  kRows,        // dim 0 split evenly; with kv_groups (text qkv / qk) by KV
                // groups, or by query heads with K/V replicated (ComputeShard)
  kRowBlocks,   // dim 0 = `blocks` equal blocks, each split evenly (gate_up)
  kCols,        // dim 1 split evenly (row-parallel o, down)
  kVocabRows,   // dim 0 split evenly after padding up to a multiple of tp
                // (embed)
  kExperts,     // MoE experts [E, ...]: dim 0 split evenly over EP ranks
                // (an EP group spans several TP groups: CheckpointLayout),
                // never over TP
};

struct ParamSpec {
  std::string name;     // the concrete name looked up
  std::string pattern;  // table entry, layers as {i}
                        // ("text.layers.{i}.attn.qkv.weight")
  SplitKind split = SplitKind::kReplicated;
  int blocks = 1;          // kRowBlocks only
  bool kv_groups = false;  // kRows: rows laid out per KV group (below)
  int kv_rows = 2;  // kv_groups: key/value heads after each group's query
                    // heads: 2 for qkv (k, v), 1 for qk (k only, K = V)
};

// The table, in a stable order.
const std::vector<ParamSpec>& ParamTable();
// The spec of `name`; NOT_FOUND for a name outside the contract.
absl::StatusOr<ParamSpec> LookupParam(absl::string_view name);

// What ComputeShard needs from the model config: the text attention heads
// that decide how a fused qkv / qk weight splits. A checkpoint's manifest
// stores them under "shard_dims" (num_heads and layer_kv_heads only when
// set, so Gemma 3 manifests are unchanged; absent means the defaults).
struct ShardDims {
  // KV heads of every text layer without an entry in layer_kv_heads.
  int64_t num_kv_heads = 1;
  // Query heads; 0 = unknown: then only the whole-KV-group split applies
  // (Gemma 3's manifests, which never needed more).
  int64_t num_heads = 0;
  // KV heads per text layer (Gemma 4: sliding and full layers differ); empty
  // = num_kv_heads for every layer.
  std::vector<int64_t> layer_kv_heads;

  // The KV heads of text layer `layer` (-1 or out of range: num_kv_heads).
  int64_t kv_heads(int64_t layer) const;
};

// The text layer index in a name ("text.layers.12.attn.qkv.weight" -> 12);
// -1 for a name outside text.layers.
int64_t TextLayerIndex(absl::string_view name);

// Rank `rank`'s shard of a global tensor: along `dim`, these [begin, end)
// global index ranges concatenated. For kVocabRows the last range may run past
// shape[0]: those rows are zero padding.
struct ShardLayout {
  int dim = 0;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  std::vector<int64_t> shard_shape;
  int64_t padded_rows = 0;  // kVocabRows: rows added to reach a multiple of tp
};

// Rank `rank` of `tp`'s shard of a global tensor by its split rule.
//
// kRows with kv_groups (a fused attention weight [(nq + m nkv) hd, H] laid out
// per KV group g: its nq / nkv query heads, then key head g, then (m = 2)
// value head g; nkv = dims.kv_heads(layer of the name), nq = dims.num_heads):
//   - nkv % tp == 0: whole KV groups, one contiguous row block per rank;
//   - else tp % nkv == 0 and nq % tp == 0 (needs dims.num_heads): the
//     r = tp / nkv ranks t of group g = t / r share its K/V heads; rank t
//     gets query heads [s nq/tp, (s + 1) nq/tp) of the group (s = t % r),
//     then the group's K (and V) rows: two row ranges
//       [g G + s (nq/tp) hd, g G + (s + 1) (nq/tp) hd)  and
//       [g G + (nq/nkv) hd, (g + 1) G)                   (G = rows / nkv),
//     so the shard is [(nq/tp + m) hd, H], q rows first. Ranks sharing a group
//     hold the same K/V rows (stored shards overlap; readers handle it).
//   - else INVALID_ARGUMENT naming the tensor, nq, nkv and tp.
// INVALID_ARGUMENT (naming the tensor) whenever the tensor cannot be split
// `tp` ways (odd block sizes, columns, ...).
absl::StatusOr<ShardLayout> ComputeShard(const ParamSpec& spec,
                                         const std::vector<int64_t>& shape,
                                         const ShardDims& dims, int tp,
                                         int rank);

// A checkpoint's (or a job's) shard layout {tp, ep}, Megatron's "MoE parallel
// folding": a job of world = tp x dp ranks (TP fastest) forms TP groups of tp
// consecutive ranks and, independently, EP groups of ep consecutive ranks (so
// with tp > 1 an EP group spans several TP groups; 8 GPUs at tp 4, ep 8:
// dense weights split 4 ways, experts 8 ways). Job rank w holds TP shard
// w % tp of the dense tensors (split by their rule) and EP shard w % ep of the
// expert tensors (experts [i E / ep, (i + 1) E / ep), as model/moe.h slices
// them), never split over TP.
//
// A checkpoint has world() = max(tp, ep) rank files: file rank r holds what
// job rank r holds, less what a lower rank already stores (StoresShard).
// Gemma 3 (ep = 1): tp files, each its TP shard; Gemma 4 at tp 1: ep files,
// rank 0 with the dense tensors and every rank with its experts.
struct CheckpointLayout {
  int tp = 1;
  int ep = 1;
  int world() const { return tp > ep ? tp : ep; }
  int tp_index(int rank) const { return rank % tp; }
  int ep_index(int rank) const { return rank % ep; }
};

// The shard of TP rank `tp_index` / EP rank `ep_index` in `layout`
// (ComputeShard's TP split over layout.tp, or the EP split over layout.ep for
// kExperts). INVALID_ARGUMENT naming the tensor when it cannot be split, e.g.
// E not divisible by ep, or an index out of range.
absl::StatusOr<ShardLayout> ComputeLocalShard(const ParamSpec& spec,
                                              const std::vector<int64_t>& shape,
                                              const ShardDims& dims,
                                              const CheckpointLayout& layout,
                                              int tp_index, int ep_index);

// The same for file rank `rank` < layout.world() (tp_index(rank),
// ep_index(rank)).
absl::StatusOr<ShardLayout> ComputeLayoutShard(
    const ParamSpec& spec, const std::vector<int64_t>& shape,
    const ShardDims& dims, const CheckpointLayout& layout, int rank);

// Whether a checkpoint in `layout` keeps rank `rank`'s shard of `spec` in that
// rank's file: dense (non-kExperts) tensors in the files of ranks < tp (TP
// shard r), experts in those of ranks < ep (EP slice r), so each TP shard and
// each expert slice is stored exactly once. (A replicated tensor's TP shards
// are all the whole tensor: stored by every rank below tp, as the Gemma 3
// format always did; readers take one.) With ep = 1 every rank stores its TP
// shard (the Gemma 3 format, unchanged); at tp = 1 rank 0 alone stores the
// dense tensors.
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
  // CopyShard). Rows of a dim-0 shard that full-width blocks already cover
  // are skipped (shards that overlap, like K/V rows replicated over TP ranks,
  // hold the same values there), so every element is covered at most once.
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
