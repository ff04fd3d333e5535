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
#include <memory>
#include <utility>

#include "model/comm.h"
#include "model/loss.h"

namespace gemma {

// How one model instance is split over a tensor-parallel group. With no comm
// (or a group of one) nothing is split and no collective runs.
//
// sequence_parallel (Megatron's sequence parallelism): between the
// column-parallel and row-parallel regions the activations [B, L, H] are
// split along the sequence (each rank holds L / tp positions), so the norms
// and the residual adds run on 1/tp of the tokens and their activations take
// 1/tp of the memory; the all-reduce after a row-parallel layer becomes a
// reduce-scatter over the sequence and the copy before a column-parallel one
// an all-gather. The norm weights then see only their rank's positions: their
// gradients are partial sums over the group (the trainer sums them). Only
// training-style forwards (no KV cache) use it, and L must divide by tp.
struct TpOptions {
  std::shared_ptr<Comm> comm;
  bool sequence_parallel = false;

  int size() const { return comm ? comm->size() : 1; }
  int rank() const { return comm ? comm->rank() : 0; }
  bool split() const { return size() > 1; }
};

at::Tensor CopyToTpRegion(const at::Tensor& x, Comm& comm);
at::Tensor ReduceFromTpRegion(const at::Tensor& x, Comm& comm);
at::Tensor GatherFromTpRegion(const at::Tensor& x, Comm& comm);
at::Tensor ScatterToTpRegion(const at::Tensor& x, Comm& comm);

// Sequence-parallel mappings over dim 1 of [B, L, ...] activations (L must
// divide by the group size):
//   ScatterToSequenceRegion      forward own L/tp slice,  backward all-gather
//   GatherFromSequenceRegion     forward all-gather,      backward
//                                reduce-scatter (the gathered tensor feeds
//                                column-parallel layers whose input gradients
//                                are partial), or with reduce_grad = false
//                                backward own slice (the consumer already
//                                returns the full gradient on every rank, as
//                                VocabParallelTokenLoss does)
//   ReduceScatterToSequenceRegion forward reduce-scatter, backward all-gather
at::Tensor ScatterToSequenceRegion(const at::Tensor& x, Comm& comm);
at::Tensor GatherFromSequenceRegion(const at::Tensor& x, Comm& comm,
                                    bool reduce_grad = true);
at::Tensor ReduceScatterToSequenceRegion(const at::Tensor& x, Comm& comm);

// Token split for work that is per token (the MoE block under TP): rows
// [N, ...] (identical on every rank of the group) are cut into chunks of
// ceil(N / tp) rows in rank order, the last ones shorter or empty; rank r
// works on chunk r.
//   ScatterRowsToTpRegion   forward own chunk [n_r, ...], backward
//                           all-gather (every rank gets the full gradient)
//   GatherRowsFromTpRegion  forward the chunks of every rank concatenated
//                           back to [N, ...], backward own chunk
// TpRowChunk gives chunk r as [begin, begin + count).
std::pair<int64_t, int64_t> TpRowChunk(int64_t n, int tp, int rank);
at::Tensor ScatterRowsToTpRegion(const at::Tensor& x, Comm& comm);
at::Tensor GatherRowsFromTpRegion(const at::Tensor& x, int64_t n, Comm& comm);

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
// [..., H]. The gradient of weight_shard is its rows' share of the full one;
// row `padding_idx` (a global id; < 0: none) gets no gradient, as in
// torch::nn::Embedding.
at::Tensor VocabParallelEmbedding(const at::Tensor& ids,
                                  const at::Tensor& weight_shard,
                                  const VocabShard& shard, Comm& comm,
                                  int64_t padding_idx = -1);

// Logits [..., vocab_size] of `hidden` [..., H] through a tied head split by
// vocab rows (weight_shard [shard rows, H]): a column-parallel matmul whose
// input copy sums the shards' parts of the hidden state's gradient, gathered
// over the group and cut to the real vocabulary. Without a split the plain
// matmul.
at::Tensor VocabParallelLogits(const at::Tensor& hidden,
                               const at::Tensor& weight_shard,
                               int64_t vocab_size, const TpOptions& tp);

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
