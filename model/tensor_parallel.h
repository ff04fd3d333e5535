// Tensor parallelism's building blocks, decomposed as Megatron-Core does:
// the collectives as autograd functions, used in pairs around sharded
// layers, a vocab-parallel embedding and a vocab-parallel fused chunked
// cross-entropy over the tied LM head.
//
//   column-parallel (qkv, gate_up: weight rows split):
//     y_local = CopyToTpRegion(x, tp) @ W_rows_local^T
//   row-parallel (o, down: weight columns split):
//     y = ReduceFromTpRegion(x_local @ W_cols_local^T, tp)
//
// Pairs:
//   CopyToTpRegion      forward identity,                 backward all-reduce
//   ReduceFromTpRegion  forward all-reduce,               backward identity
//   GatherFromTpRegion  forward all-gather (last dim),    backward own slice
//   ScatterToTpRegion   forward own slice (last dim),     backward all-gather
//
// Vocabulary shards follow model/param_table.h's kVocabRows rule: the vocab
// is padded up to a multiple of tp and split evenly; rank r holds rows
// [r * per, (r + 1) * per) with per = ceil(V / tp); rows >= V are padding
// (never a target, never in the softmax).
//
// Every rank of the group calls the same functions in the same order
// (model/comm.h's contract). `comm` must outlive the backward pass. Errors
// (shape, a dead peer) throw c10::Error.
#ifndef GEMMA_MODEL_TENSOR_PARALLEL_H_
#define GEMMA_MODEL_TENSOR_PARALLEL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "model/comm.h"
#include "model/loss.h"

namespace gemma {

at::Tensor CopyToTpRegion(const at::Tensor& x, Comm& comm);
at::Tensor ReduceFromTpRegion(const at::Tensor& x, Comm& comm);
at::Tensor GatherFromTpRegion(const at::Tensor& x, Comm& comm);
at::Tensor ScatterToTpRegion(const at::Tensor& x, Comm& comm);

// Rows [start, start + rows) of the padded vocabulary held by `rank`; the
// first `valid` of them are real tokens.
struct VocabShard {
  int64_t start = 0;
  int64_t rows = 0;
  int64_t valid = 0;
};
VocabShard VocabShardOf(int64_t vocab_size, int tp, int rank);

// Embedding lookup with the table split by vocab rows: each rank looks up
// the ids it owns (zeros elsewhere) and the results are summed over the
// group. ids: any shape, int64; weight_shard: [shard.rows, H]. Returns
// [..., H]. The gradient of weight_shard is its rows' share of the full one.
at::Tensor VocabParallelEmbedding(const at::Tensor& ids,
                                  const at::Tensor& weight_shard,
                                  const VocabShard& shard, Comm& comm);

// model/loss.h's TokenLoss with the head weight split by vocab rows: per
// chunk the ranks all-reduce the row max (MAX), the sum of exponentials
// (SUM) and the target logit (SUM, from its owner), so no rank ever holds
// more than [chunk, V / tp] logits. Every rank returns the same loss_sum,
// tokens and correct (argmax over the whole vocab, first index on ties).
// Gradients: `h` gets the full gradient (already summed over the group: pass
// the replicated hidden state, not CopyToTpRegion of it); `weight_shard` its
// rows' share. h [N, H] replicated, weight_shard [shard.rows, H], targets [N].
LmLoss VocabParallelTokenLoss(const at::Tensor& h,
                              const at::Tensor& weight_shard,
                              const VocabShard& shard, int64_t vocab_size,
                              const at::Tensor& targets, Comm& comm,
                              const LmLossOptions& options = {});

// CausalLmLoss (labels not shifted, hidden [B, T, H]) on a vocab-split head.
LmLoss VocabParallelCausalLmLoss(const at::Tensor& hidden,
                                 const at::Tensor& weight_shard,
                                 const VocabShard& shard, int64_t vocab_size,
                                 const at::Tensor& labels, Comm& comm,
                                 const LmLossOptions& options = {});

}  // namespace gemma

#endif  // GEMMA_MODEL_TENSOR_PARALLEL_H_
