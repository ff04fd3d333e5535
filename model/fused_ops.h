// Fused CUDA kernels for the Gemma decoder's elementwise work (RMSNorm,
// per-head norm + rotary embedding, gelu_tanh(gate) * up, residual add +
// norm), with autograd. On a GPU the unfused formulation spends as much time
// in small elementwise kernels and dtype copies as in the GEMMs of a training
// step, and a decode step is ~85 kernels a layer; these cut that to one
// kernel per fused block (forward) and one or two (backward).
//
// The math is the ATen formulation's (model/layers.h): fp32 inside, rounded
// once when stored, where the unfused path rounds after each op. The CUDA
// unit tests (model/fused_ops_test.cc) hold the two to each other, and the
// GPU parity suite holds the model to transformers.
//
// The decode step's attention over a static KV cache has a split-K kernel of
// its own (model/decode_attention.h), dispatched here too.
//
// Also here: the few-row GEMV (FusedLinear) that serves decode's projections
// in place of cuBLAS (model/gemv.h).
//
// The kernels serve CUDA float, bf16 and fp16 tensors in builds with
// GEMMA_WITH_CUDA; elsewhere (and with GEMMA_FUSED_KERNELS=0, or
// SetFusedKernels(false), e.g. for a benchmark's baseline) callers take the
// ATen path. Callers ask FusedApplies first.
#ifndef GEMMA_MODEL_FUSED_OPS_H_
#define GEMMA_MODEL_FUSED_OPS_H_

#include <ATen/core/Tensor.h>

#include <utility>
#include <vector>

#include "model/decode_attention.h"

namespace gemma {

// Whether this build has the kernels (GEMMA_WITH_CUDA).
bool FusedKernelsBuilt();
// On unless GEMMA_FUSED_KERNELS=0 or SetFusedKernels(false).
bool FusedKernelsEnabled();
void SetFusedKernels(bool on);

// Chained launches (programmatic dependent launch, model/cuda_launch.cuh):
// the decode kernels (norms, q/k norm+rope, attention, GEMVs) start while
// the kernel before them finishes, a GEMV streaming its weights meanwhile.
// Takes effect on compute capability 9.0 and newer. On unless
// GEMMA_CHAINED_LAUNCHES=0 or SetChainedLaunches(false).
bool ChainedLaunchesEnabled();
void SetChainedLaunches(bool on);
// Whether launches chain on CUDA device `device`: enabled and compute
// capability 9.0 or newer. False in builds without CUDA.
bool ChainedLaunchesApply(int device);

// Whether the fused kernels serve rows of `x`: built, enabled, x on CUDA in
// float, bf16 or fp16, last dimension at most `max_row` elements.
bool FusedApplies(const at::Tensor& x, int64_t max_row = 12000);

// x * rsqrt(mean(x^2) + eps) * (offset + w) over the last dimension (w
// undefined: scale 1), in x's dtype. Differentiable in x and w.
at::Tensor FusedRmsNorm(const at::Tensor& x, const at::Tensor& w, double eps,
                        double offset);

// rope(norm(x)) per head for x [B, L, d2(, d3), hd] (any strides, hd
// contiguous) with cos, sin [B or 1, L, hd]: norm as FusedRmsNorm (skipped
// when `norm` is false), rope(t) = t * cos + rotate_half(t) * sin (skipped
// when cos is undefined). Returns a contiguous tensor of x's shape.
// Differentiable in x and w.
at::Tensor FusedNormRope(const at::Tensor& x, bool norm, const at::Tensor& w,
                         double eps, double offset, const at::Tensor& cos,
                         const at::Tensor& sin);

// The attention's inputs from the fused qkv projection's output
// y [B, L, nkv, g + 2, hd] (per KV group: its g query heads, k, v):
// {rope(norm(q; q_w)) [B, L, nkv, g, hd], rope(norm(k; k_w)) [B, L, nkv, hd],
// v [B, L, nkv, hd]}, all contiguous. Differentiable in y, q_w and k_w; the
// backward writes d(y) in one buffer (no zero-filled slices summed).
std::vector<at::Tensor> FusedQkvNormRope(const at::Tensor& y, int64_t g,
                                         const at::Tensor& q_w,
                                         const at::Tensor& k_w, double eps,
                                         double offset, const at::Tensor& cos,
                                         const at::Tensor& sin);

// Inference only (no autograd): the first two of FusedQkvNormRope, q and k,
// in one kernel launch (a decode step's attention runs it once a layer).
std::pair<at::Tensor, at::Tensor> FusedQkNormRope(
    const at::Tensor& y, int64_t g, const at::Tensor& q_w, const at::Tensor& k_w,
    double eps, double offset, const at::Tensor& cos, const at::Tensor& sin);

// gelu_tanh(gate) * up for gate_up [..., 2I] (gate first): [..., I].
// Differentiable.
at::Tensor FusedGeluMul(const at::Tensor& gate_up);

// Inference only (no autograd): h = residual + norm(x; w), and with w2
// defined y = norm(h; w2), in one kernel. Returns {h, y}.
std::pair<at::Tensor, at::Tensor> FusedResidualNorm(const at::Tensor& residual,
                                                    const at::Tensor& x,
                                                    const at::Tensor& w,
                                                    const at::Tensor& w2,
                                                    double eps, double offset);

// ---- Decode attention over a static KV cache (model/decode_attention.h)

// Whether a decode step over activations like `x` with `head_dim` can take
// the decode-attention kernel at all: built, enabled, x on CUDA in float,
// bf16 or fp16, head_dim 64, 128, 256 or 512. FusedDecodeAttentionApplies
// decides for the actual operands.
bool FusedDecodeAttentionServes(const at::Tensor& x, int64_t head_dim);

// Whether FusedDecodeAttention serves `in`: built, enabled, and the
// operands are what DecodeAttentionInputs says (shapes, one dtype and
// device, contiguous aligned caches). Issues no host sync.
bool FusedDecodeAttentionApplies(const DecodeAttentionInputs& in);

// Inference only (no autograd): writes k_new, v_new at slot `index` of the
// caches and returns the step's attention output [B, nkv, g, hd] in q's
// dtype, masked as StaticStepBias masks (fused_cuda::DecodeAttention).
at::Tensor FusedDecodeAttention(const DecodeAttentionInputs& in);

// ---- Few-row projections (model/gemv.h) ---------------------------------
// Batch-1..4 decode reads every weight once per step. Measured on an H100
// (bench/gemv_bench.cc, 4B shapes, M = 1, launched the usual way): the GEMV
// kernel reaches 94% of the HBM bandwidth on the vocabulary projection
// against cuBLAS's 90%, and is even with cuBLAS on the layers' projections
// (47-85%: each call pays ~3 us of start-up on 3-30 us of streaming).
// Chained, it streams its weights while the kernel before it finishes, which
// cuBLAS's kernels cannot; so the head always takes it (VocabParallelLogits)
// and the layers' projections where launches chain (GemvServesProjection).

// Whether FusedLinear serves linear(x, w, bias): built, enabled, no autograd
// needed (grad mode off, or none of x, w, bias requires grad), and
// fused_cuda::GemvApplies: x and w CUDA bf16 (or both fp16), w [N, K]
// contiguous and 16-byte aligned, K % 8 == 0, 1 to 4 rows of x (numel / K),
// bias undefined or [N] of w's dtype. False for CPU tensors and in builds
// without CUDA.
bool FusedGemvApplies(const at::Tensor& x, const at::Tensor& w,
                      const at::Tensor& bias = {});

// linear(x, w, bias) = x · w^T (+ bias), [..., N] in x's dtype with fp32
// accumulation, by the GEMV kernel. No grad_fn: inference only. Throws
// c10::Error where FusedGemvApplies is false.
at::Tensor FusedLinear(const at::Tensor& x, const at::Tensor& w,
                       const at::Tensor& bias = {});

// FusedLinear where FusedGemvApplies, else at::linear.
at::Tensor LinearWithGemv(const at::Tensor& x, const at::Tensor& w,
                          const at::Tensor& bias = {});

// Whether a layer's projection (Projection, the MLP's gate_up) takes the
// GEMV: FusedGemvApplies and ChainedLaunchesApply on x's device.
bool GemvServesProjection(const at::Tensor& x, const at::Tensor& w,
                          const at::Tensor& bias = {});

// gelu_tanh(x · gate^T) * (x · up^T) for w = [gate; up] [2I, K]: one GEMV
// kernel, bitwise FusedGeluMul(FusedLinear(x, w)). Inference only; needs
// FusedGemvApplies(x, w) and an even row count of w (throws otherwise).
at::Tensor FusedGemvGeluMul(const at::Tensor& x, const at::Tensor& w);

}  // namespace gemma

#endif  // GEMMA_MODEL_FUSED_OPS_H_
