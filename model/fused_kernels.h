// Launchers of the fused CUDA kernels (model/fused_kernels.cu), compiled only
// with GEMMA_WITH_CUDA. Callers go through model/fused_ops.h, which adds the
// autograd wiring and decides when a kernel applies; these functions check
// shapes and dtypes and run on the current CUDA stream (graph-capture safe:
// no host syncs, outputs from the caching allocator).
//
// Every kernel reads float, bf16 or fp16 (each operand its own dtype), does
// its arithmetic in fp32 and rounds once when it stores. "Norm" is the
// Gemma RMSNorm x * rsqrt(mean(x^2) + eps) * (offset + w) over the last
// dimension (offset 1 for Gemma 3's stored "w"; w undefined means scale 1).
#ifndef GEMMA_MODEL_FUSED_KERNELS_H_
#define GEMMA_MODEL_FUSED_KERNELS_H_

#include <ATen/core/Tensor.h>

#include <utility>

namespace gemma::fused_cuda {

// y = Norm(x) ([..., n], x's dtype). With `rstd` non-null, also the per-row
// reciprocal RMS [rows] (fp32) the backward needs.
at::Tensor RmsNormForward(const at::Tensor& x, const at::Tensor& w,
                          double offset, double eps, at::Tensor* rstd);

// Gradients of RmsNormForward: dx (x's dtype) and, when `want_dw`, dw (w's
// dtype; summed over rows in fp32).
std::pair<at::Tensor, at::Tensor> RmsNormBackward(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& rstd,
    const at::Tensor& w, double offset, bool want_dw);

// Inference: h = residual + Norm(x; w) (rounded to residual's dtype) and,
// when w2 is defined, y = Norm(h; w2); one kernel. Returns {h, y}.
std::pair<at::Tensor, at::Tensor> ResidualRmsNorm(const at::Tensor& residual,
                                                  const at::Tensor& x,
                                                  const at::Tensor& w,
                                                  const at::Tensor& w2,
                                                  double offset, double eps);

// Per-head norm then rotary embedding, for x [B, L, d2, (d3,) hd] (any
// strides, the last dimension contiguous) and cos, sin [B or 1, L, hd]:
// y = rope(Norm(x)) with rope(t) = t * cos + rotate_half(t) * sin. Without
// `norm` only the rope; with cos undefined only the norm. y is contiguous,
// x's shape and dtype. `rstd` as in RmsNormForward (rows = all but hd).
at::Tensor NormRopeForward(const at::Tensor& x, bool norm, const at::Tensor& w,
                           double offset, double eps, const at::Tensor& cos,
                           const at::Tensor& sin, at::Tensor* rstd);

// q and k of a fused qkv projection's output y [B, L, nkv, g + 2, hd] (per
// KV group its g query heads, k, v) in one launch: {NormRopeForward of
// y[:, :, :, :g] with q_w, of y[:, :, :, g] with k_w} (contiguous
// [B, L, nkv, g, hd] and [B, L, nkv, hd]), with their rstd when asked.
std::pair<at::Tensor, at::Tensor> QkNormRopeForward(
    const at::Tensor& y, int64_t g, const at::Tensor& q_w, const at::Tensor& k_w,
    double offset, double eps, const at::Tensor& cos, const at::Tensor& sin,
    at::Tensor* rstd_q, at::Tensor* rstd_k);

// Gradients of NormRopeForward: dx (x's shape; written into `dx_into`, a
// view of x's shape with hd contiguous, when defined, else a new contiguous
// tensor) and, when `want_dw`, dw.
std::pair<at::Tensor, at::Tensor> NormRopeBackward(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& rstd,
    bool norm, const at::Tensor& w, double offset, const at::Tensor& cos,
    const at::Tensor& sin, bool want_dw, const at::Tensor& dx_into = {});

// gelu_tanh(gate) * up for gate_up [..., 2I] (gate the first I columns of
// each row, up the last I): [..., I].
at::Tensor GeluMulForward(const at::Tensor& gate_up);

// d(gate_up) [..., 2I] from dy [..., I].
at::Tensor GeluMulBackward(const at::Tensor& dy, const at::Tensor& gate_up);

}  // namespace gemma::fused_cuda

#endif  // GEMMA_MODEL_FUSED_KERNELS_H_
