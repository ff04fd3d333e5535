// y = x · W^T (+ bias) for one to four rows of x: the projections of
// batch-1..4 decode, where every step reads each weight once and cuBLAS's
// M = 1 kernels reach 46-86% of the HBM bandwidth (bench/gemv_bench.cc). The
// kernel (model/gemv.cu) streams each row of W once for all rows of x with
// 16-byte asynchronous copies, many in flight per thread, and accumulates in
// fp32. Launched chained (model/cuda_launch.cuh): a call streams its weights
// while the kernel before it finishes.
//
// (The residual add and norms before a GEMV as its prologue, saving their
// own launch, measured no faster with CUDA graphs and 6.7% slower eager:
// every block reads the activations from L2 and syncs twice on the critical
// path, which costs what the launch did; bench/RESULTS.md, session 10.)
//
// Compiled only with GEMMA_WITH_CUDA (the lib gemma_model_cuda). Callers go
// through model/fused_ops.h (FusedGemvApplies / FusedLinear), which adds the
// switch (GEMMA_FUSED_KERNELS=0) and the autograd condition. Runs on the
// current CUDA stream with no host sync: safe inside CUDA graph capture.
#ifndef GEMMA_MODEL_GEMV_H_
#define GEMMA_MODEL_GEMV_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace gemma::fused_cuda {

// The most rows of x (numel / K) one call serves.
constexpr int64_t kGemvMaxRows = 4;

// How the kernel splits the work. A block is 4 warps; a warp computes
// `rows_per_warp` rows of W over its share of K, `unroll` chunk columns (a
// 16-byte load per row per lane each) a stage, with `stages` stages in a
// cp.async ring in shared memory (stages - 1 of them in flight while one is
// multiplied); `k_split` warps of a block share one row group's K (summed
// through shared memory, no atomics). A zero field is chosen from the shape
// (GemvAutoConfig).
struct GemvConfig {
  int rows_per_warp = 0;  // see GemvCompiledConfigs for the combinations
  int unroll = 0;
  int stages = 0;
  int k_split = 0;  // 1, 2 or 4
};

// The (rows_per_warp, unroll, stages) combinations compiled, each with
// k_split 0 (automatic); a sweep may set k_split 1, 2 or 4 on any of them.
std::vector<GemvConfig> GemvCompiledConfigs();

// The configuration Gemv uses for `rows` rows of x, W [n, k], on the current
// device (its SM count).
GemvConfig GemvAutoConfig(int64_t rows, int64_t n, int64_t k);

// Whether Gemv serves these tensors: x and w CUDA on one device, both bf16 or
// both fp16; w [N, K] contiguous with a 16-byte aligned start and K % 8 == 0;
// x [..., K] with 1..kGemvMaxRows rows (any strides); bias undefined or [N]
// of w's dtype on that device. Looks at metadata only (no autograd check).
bool GemvApplies(const at::Tensor& x, const at::Tensor& w,
                 const at::Tensor& bias);

// y [..., N] = x · w^T (+ bias), in x's dtype, fp32 accumulation. Throws
// c10::Error when GemvApplies is false or `config` names an uncompiled
// combination. No autograd: the result carries no grad_fn.
at::Tensor Gemv(const at::Tensor& x, const at::Tensor& w,
                const at::Tensor& bias, GemvConfig config = {});

// gelu_tanh(x · gate^T) * (x · up^T) [..., N] for w = [gate; up] [2N, K] (the
// MLP's gate_up weight): the GEMV with the gelu*up kernel as its epilogue,
// bitwise the same as Gemv then the fused gelu*up (model/fused_ops.h). Needs
// GemvApplies(x, w, {}) and an even row count; config.rows_per_warp even
// (or 0).
at::Tensor GemvGeluMul(const at::Tensor& x, const at::Tensor& w,
                       GemvConfig config = {});

}  // namespace gemma::fused_cuda

#endif  // GEMMA_MODEL_GEMV_H_
