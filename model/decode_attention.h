// One decode step of grouped-query attention over a static KV cache
// (model/kv_cache.h, static mode with a step index) as one split-K CUDA
// kernel ("flash decoding") plus a small combine kernel, in place of
// cache->Update + StaticStepBias + at::scaled_dot_product_attention.
//
// SDPA's kernels launch one block per (row, KV head) for a single query, so a
// batch-1 step reads the cache with a handful of SMs. Here the valid keys of
// each (row, KV head) are split over `splits` blocks (chosen from the cache
// size and the SM count so the grid fills the GPU); each block reads only its
// share, all query heads of the KV head from one load of each key, and keeps
// an fp32 online softmax; the combine kernel merges the partial results.
//
// The mask is StaticStepBias's, computed in the kernel from the device-side
// index (no host sync): slot j of row b is visible iff
//   j <= index && padding[b][j] != 0 && (window == 0 || j > index - window),
// and slots outside [max(0, index - window + 1), index] are never read. The
// kernel also writes this step's keys and values at slot `index` (the one
// write cache->Update would do); every block that reads slot `index` takes
// them from k_new / v_new instead, so the write races with no read.
//
// Callers go through model/fused_ops.h (FusedDecodeAttentionApplies first);
// the launcher is compiled only with GEMMA_WITH_CUDA. Graph-capture safe:
// current stream, workspace from the caching allocator, no host syncs.
#ifndef GEMMA_MODEL_DECODE_ATTENTION_H_
#define GEMMA_MODEL_DECODE_ATTENTION_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace gemma {

// The operands of one decode step. Shapes: B rows, nkv KV heads, g query
// heads per KV head, hd head_dim, C cache slots. q, k_new, v_new and the
// caches share one dtype (float, bf16 or fp16) and one CUDA device.
struct DecodeAttentionInputs {
  at::Tensor q;        // [B, nkv, g, hd] (any strides, hd contiguous)
  at::Tensor k_new;    // [B, nkv, 1, hd] this token's keys (hd contiguous)
  at::Tensor v_new;    // [B, nkv, 1, hd] this token's values (hd contiguous)
  at::Tensor k_cache;  // [B, nkv, C, hd] contiguous; written at slot index
  at::Tensor v_cache;  // [B, nkv, C, hd] contiguous; written at slot index
  at::Tensor index;    // [1] int64: the new token's slot, 0 <= index < C
  at::Tensor padding;  // [B, C] int64: nonzero for the slots of real tokens
  int64_t window = 0;  // > 0: keys j > index - window only (sliding layers)
  double scale = 1.0;  // scores = q . k * scale
  // Optional, Gemma 3's q/k norm and rotary embedding folded in: when
  // q_norm_weight is defined, q and k_new are the projection's raw rows and
  // the kernel first computes, per head row x,
  //   rope(x * rsqrt(mean(x^2) + norm_eps) * (norm_offset + w), cos, sin)
  // rounded to q's dtype (FusedNormRope's result, up to the order of the sum
  // of squares), and writes that key to the cache. Weights [hd] contiguous;
  // cos, sin this step's rows [B or 1, 1, hd] (hd contiguous); all in q's
  // dtype and on its device.
  at::Tensor q_norm_weight, k_norm_weight, cos, sin;
  double norm_eps = 1e-6, norm_offset = 1.0;
};

namespace fused_cuda {

// The head dims the kernel serves (64, 128, 256, 512).
bool DecodeAttentionHeadDim(int64_t hd);

// Why DecodeAttention cannot serve `in`, or "" when it can: q a CUDA float,
// bf16 or fp16 tensor of a served head dim, every operand of the shape,
// dtype, device and layout the struct says, the caches aligned for 16-byte
// loads (a fresh allocation is). Reads no device memory.
std::string DecodeAttentionRejects(const DecodeAttentionInputs& in);

// How many blocks split each (row, KV head)'s keys for B rows, nkv KV heads,
// g query heads per KV head, C slots and `window` on a GPU of `sms` SMs (the
// launcher's choice; exposed for tests and benchmarks).
int64_t DecodeAttentionSplits(int64_t b, int64_t nkv, int64_t g, int64_t hd,
                              int64_t c, int64_t window, int64_t sms);

// The attention output [B, nkv, g, hd] (contiguous, q's dtype; = [B, nq, hd]
// in head order) of the step, after writing k_new, v_new at slot `index` of
// the caches. Throws c10::Error on operands it does not serve
// (DecodeAttentionRejects). A row whose slots are all masked gets 0
// (StaticStepBias + softmax would give the mean of all C values; a decode
// step's own slot is always real).
at::Tensor DecodeAttention(const DecodeAttentionInputs& in);

}  // namespace fused_cuda
}  // namespace gemma

#endif  // GEMMA_MODEL_DECODE_ATTENTION_H_
