// Device helpers shared by our CUDA kernels (fused_kernels.cu, gemv.cu,
// decode_attention.cu): float <-> float/bf16/fp16 conversions for kernels
// templated on the element type, a warp-wide sum, and gelu_tanh.
#ifndef GEMMA_MODEL_CUDA_NUMERIC_CUH_
#define GEMMA_MODEL_CUDA_NUMERIC_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace gemma::fused_cuda {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

// v rounded to T (round to nearest even).
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) {
  return __float2half(v);
}

// The sum over the warp, in every lane (all 32 lanes must call it).
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// gelu_tanh(g) and its derivative. One definition for every kernel, so
// that a fused epilogue (model/gemv.cu) rounds exactly as the gelu*up
// kernel does.
__device__ __forceinline__ void GeluTanh(float g, float* value, float* slope) {
  constexpr float kA = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kB = 0.044715f;
  const float t = tanhf(kA * (g + kB * g * g * g));
  *value = 0.5f * g * (1.f + t);
  *slope = 0.5f * (1.f + t) + 0.5f * g * (1.f - t * t) * kA * (1.f + 3.f * kB * g * g);
}

}  // namespace gemma::fused_cuda

#endif  // GEMMA_MODEL_CUDA_NUMERIC_CUH_
