// Fused CUDA kernels for the Gemma blocks: see model/fused_kernels.h.
//
// Each operand carries its dtype as a runtime tag (float, bf16, fp16), read
// into fp32 and stored rounded once, so one instantiation serves every
// dtype mix (bf16 activations with fp32 or bf16 norm weights). The kernels
// are memory-bound. Where the activations share one dtype and rows are whole
// 16-byte vectors (every Gemma size: head_dim 64-512, hidden 640-5376) the
// vectorized kernels below run instead: 16-byte accesses, rows held in
// registers, 32-bit index math, per-block weight-gradient partials. The
// first profile of the generic kernels measured them 2-7x off the bandwidth
// (an RMSNorm backward over 4096 x 2560 bf16: 151 us, 21 MB in and out).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "model/cuda_launch.cuh"
#include "model/cuda_numeric.cuh"
#include "model/fused_kernels.h"

namespace gemma::fused_cuda {
namespace {

enum Kind : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

int KindOf(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return kF32;
    case at::kBFloat16:
      return kBF16;
    case at::kHalf:
      return kF16;
    default:
      TORCH_CHECK(false, "fused kernels: ", what, " must be float, bf16 or fp16, got ",
                  t.scalar_type());
  }
  return kF32;
}

__device__ __forceinline__ float Load(const void* p, int64_t i, int kind) {
  switch (kind) {
    case kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case kF16:
      return __half2float(static_cast<const __half*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ float Store(void* p, int64_t i, int kind, float v) {
  switch (kind) {
    case kBF16: {
      const __nv_bfloat16 r = __float2bfloat16(v);
      static_cast<__nv_bfloat16*>(p)[i] = r;
      return __bfloat162float(r);
    }
    case kF16: {
      const __half r = __float2half(v);
      static_cast<__half*>(p)[i] = r;
      return __half2float(r);
    }
    default:
      static_cast<float*>(p)[i] = v;
      return v;
  }
}

// The norm's per-column scale: offset + w[j], or 1 without a weight.
struct Scale {
  const void* w;
  int kind;
  float offset;
  __device__ __forceinline__ float operator()(int64_t j) const {
    return w != nullptr ? offset + Load(w, j, kind) : 1.f;
  }
};

Scale MakeScale(const at::Tensor& w, double offset, int64_t n) {
  if (!w.defined()) return Scale{nullptr, kF32, 0.f};
  TORCH_CHECK(w.is_cuda() && w.is_contiguous() && w.numel() == n,
              "fused norm: weight must be a contiguous CUDA [", n,
              "], got ", w.sizes());
  return Scale{w.data_ptr(), KindOf(w, "the norm weight"),
               static_cast<float>(offset)};
}

// Sum over the block; every thread gets the result. `scratch` holds 32.
__device__ float BlockSum(float v, float* scratch) {
  v = WarpSum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // the previous call's readers are done with scratch
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nw = (blockDim.x + 31) >> 5;
    v = lane < nw ? scratch[lane] : 0.f;
    v = WarpSum(v);
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

int Threads(int64_t n, int64_t rows) {
  const int64_t per = rows < 256 ? 2 : 8;  // few rows: more threads per row
  int64_t t = (n + per - 1) / per;
  t = ((t + 31) / 32) * 32;
  return static_cast<int>(std::clamp<int64_t>(t, 32, 1024));
}

int SmCount() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

// ---- RMSNorm over rows of n (x contiguous), optionally after a residual add
__global__ void RmsNormFwdKernel(const void* x, const void* res, int kind,
                                 Scale s1, Scale s2, float eps, int64_t n,
                                 void* y, void* y2, float* rstd) {
  __shared__ float scratch[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  float ss = 0.f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = Load(x, base + j, kind);
    ss += v * v;
  }
  ss = BlockSum(ss, scratch);
  const float r = rsqrtf(ss / static_cast<float>(n) + eps);
  if (rstd != nullptr && threadIdx.x == 0) rstd[blockIdx.x] = r;
  if (res == nullptr) {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      Store(y, base + j, kind, Load(x, base + j, kind) * r * s1(j));
    return;
  }
  // h = residual + norm(x), rounded as stored; then norm(h) from the rounded
  // values (each thread re-reads only what it wrote).
  float ss2 = 0.f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float h = Store(
        y, base + j, kind,
        Load(res, base + j, kind) + Load(x, base + j, kind) * r * s1(j));
    ss2 += h * h;
  }
  if (y2 == nullptr) return;
  ss2 = BlockSum(ss2, scratch);
  const float r2 = rsqrtf(ss2 / static_cast<float>(n) + eps);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    Store(y2, base + j, kind, Load(y, base + j, kind) * r2 * s2(j));
}

// dx = rstd * (g - xhat * mean(g * xhat)), g = dy * scale, xhat = x * rstd;
// dw[j] = sum over rows of dy * xhat, per block in shared memory (each
// thread owns its columns), then one atomic add per block and column.
__global__ void RmsNormBwdKernel(const void* dy, int dkind, const void* x,
                                 int xkind, const float* rstd, Scale s,
                                 int64_t n, int64_t rows, void* dx, float* dw) {
  extern __shared__ float smem[];
  float* scratch = smem;
  float* dws = smem + 32;
  if (dw != nullptr)
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) dws[j] = 0.f;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * n;
    const float r = rstd[row];
    float dot = 0.f;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      dot += Load(dy, base + j, dkind) * s(j) * Load(x, base + j, xkind) * r;
    dot = BlockSum(dot, scratch) / static_cast<float>(n);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const float d = Load(dy, base + j, dkind);
      const float xh = Load(x, base + j, xkind) * r;
      Store(dx, base + j, xkind, r * (d * s(j) - xh * dot));
      if (dw != nullptr) dws[j] += d * xh;
    }
  }
  if (dw != nullptr)
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) atomicAdd(&dw[j], dws[j]);
}

// ---- Per-head norm + rotary embedding, one warp per row of hd
struct Lead {  // the dimensions before hd: [B, L, ...]
  int nd;
  int64_t size[4];
  int64_t stride[4];
};

__device__ __forceinline__ int64_t RowOffset(const Lead& ld, int64_t r,
                                             int64_t* b, int64_t* l) {
  int64_t off = 0;
  for (int k = ld.nd - 1; k >= 0; --k) {
    const int64_t i = r % ld.size[k];
    r /= ld.size[k];
    off += i * ld.stride[k];
    if (k == 0) *b = i;
    if (k == 1) *l = i;
  }
  return off;
}

struct Rope {
  const void* cos;  // null: no rope
  const void* sin;
  int kind;
  int64_t bstride, lstride;
};

__global__ void NormRopeFwdKernel(const void* x, int kind, Lead ld,
                                  int64_t rows, int64_t hd, bool norm, Scale s,
                                  float eps, Rope rope, void* y, float* rstd) {
  const int lane = threadIdx.x & 31;
  const int64_t row =
      static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;  // the whole warp
  int64_t b = 0, l = 0;
  const int64_t xo = RowOffset(ld, row, &b, &l);
  const int64_t yo = row * hd;
  float r = 1.f;
  if (norm) {
    float ss = 0.f;
    for (int64_t j = lane; j < hd; j += 32) {
      const float v = Load(x, xo + j, kind);
      ss += v * v;
    }
    r = rsqrtf(WarpSum(ss) / static_cast<float>(hd) + eps);
    if (rstd != nullptr && lane == 0) rstd[row] = r;
  }
  auto normed = [&](int64_t j) {
    const float v = Load(x, xo + j, kind);
    return norm ? v * r * s(j) : v;
  };
  const int64_t half = hd / 2;
  const int64_t co = b * rope.bstride + l * rope.lstride;
  for (int64_t j = lane; j < hd; j += 32) {
    float v = normed(j);
    if (rope.cos != nullptr) {
      const float c = Load(rope.cos, co + j, rope.kind);
      const float sn = Load(rope.sin, co + j, rope.kind);
      v = j < half ? v * c - normed(j + half) * sn : v * c + normed(j - half) * sn;
    }
    Store(y, yo + j, kind, v);
  }
}

__global__ void NormRopeBwdKernel(const void* dy, int dkind, const void* x,
                                  int kind, Lead ld, int64_t rows, int64_t hd,
                                  bool norm, const float* rstd, Scale s,
                                  Rope rope, void* dx, Lead dld, float* dw) {
  extern __shared__ float dws[];  // [hd]
  if (dw != nullptr)
    for (int64_t j = threadIdx.x; j < hd; j += blockDim.x) dws[j] = 0.f;
  __syncthreads();
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const int64_t half = hd / 2;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps + (threadIdx.x >> 5);
       row < rows; row += static_cast<int64_t>(gridDim.x) * warps) {
    int64_t b = 0, l = 0;
    const int64_t xo = RowOffset(ld, row, &b, &l);
    const int64_t dxo = RowOffset(dld, row, &b, &l);
    const int64_t go = row * hd;
    const int64_t co = b * rope.bstride + l * rope.lstride;
    // The gradient before the rope (its transpose: rope with -sin).
    auto dn = [&](int64_t j) {
      const float d = Load(dy, go + j, dkind);
      if (rope.cos == nullptr) return d;
      const float c = Load(rope.cos, co + j, rope.kind);
      if (j < half) {
        return d * c + Load(dy, go + j + half, dkind) *
                           Load(rope.sin, co + j + half, rope.kind);
      }
      return d * c - Load(dy, go + j - half, dkind) *
                         Load(rope.sin, co + j - half, rope.kind);
    };
    if (!norm) {
      for (int64_t j = lane; j < hd; j += 32) Store(dx, dxo + j, kind, dn(j));
      continue;
    }
    const float r = rstd[row];
    float dot = 0.f;
    for (int64_t j = lane; j < hd; j += 32)
      dot += dn(j) * s(j) * Load(x, xo + j, kind) * r;
    dot = WarpSum(dot) / static_cast<float>(hd);
    for (int64_t j = lane; j < hd; j += 32) {
      const float g = dn(j);
      const float xh = Load(x, xo + j, kind) * r;
      Store(dx, dxo + j, kind, r * (g * s(j) - xh * dot));
      if (dw != nullptr) atomicAdd(&dws[j], g * xh);
    }
  }
  if (dw == nullptr) return;
  __syncthreads();
  for (int64_t j = threadIdx.x; j < hd; j += blockDim.x) atomicAdd(&dw[j], dws[j]);
}

// ---- gelu_tanh(gate) * up

__global__ void GeluMulFwdKernel(const void* gu, int kind, int64_t inter,
                                 int64_t total, void* y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / inter, c = i % inter;
    const int64_t g0 = row * 2 * inter + c;
    float v, slope;
    GeluTanh(Load(gu, g0, kind), &v, &slope);
    Store(y, i, kind, v * Load(gu, g0 + inter, kind));
  }
}

__global__ void GeluMulBwdKernel(const void* dy, int dkind, const void* gu,
                                 int kind, int64_t inter, int64_t total,
                                 void* dgu) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / inter, c = i % inter;
    const int64_t g0 = row * 2 * inter + c;
    float v, slope;
    GeluTanh(Load(gu, g0, kind), &v, &slope);
    const float d = Load(dy, i, dkind);
    Store(dgu, g0, kind, d * Load(gu, g0 + inter, kind) * slope);
    Store(dgu, g0 + inter, kind, d * v);
  }
}

int ElementwiseBlocks(int64_t total, int threads) {
  const int64_t want = (total + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(want, static_cast<int64_t>(SmCount()) * 16)));
}

Lead LeadOf(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 3 && x.dim() <= 5,
              "fused norm+rope: x must be [B, L, heads(, ...), hd], got ",
              x.sizes());
  TORCH_CHECK(x.stride(-1) == 1, "fused norm+rope: hd must be contiguous");
  Lead ld{};
  ld.nd = static_cast<int>(x.dim()) - 1;
  for (int k = 0; k < ld.nd; ++k) {
    ld.size[k] = x.size(k);
    ld.stride[k] = x.stride(k);
  }
  return ld;
}

Rope RopeOf(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
            at::Tensor* keep_cos, at::Tensor* keep_sin) {
  Rope rope{nullptr, nullptr, kF32, 0, 0};
  if (!cos.defined()) return rope;
  const int64_t hd = x.size(-1);
  TORCH_CHECK(hd % 2 == 0, "fused rope: head_dim must be even, got ", hd);
  TORCH_CHECK(cos.dim() == 3 && sin.sizes() == cos.sizes() &&
                  (cos.size(0) == 1 || cos.size(0) == x.size(0)) &&
                  cos.size(1) == x.size(1) && cos.size(2) == hd &&
                  cos.scalar_type() == sin.scalar_type(),
              "fused rope: cos and sin must be [B or 1, L, hd] for x ",
              x.sizes(), ", got ", cos.sizes(), " and ", sin.sizes());
  *keep_cos = cos.contiguous();
  *keep_sin = sin.contiguous();
  rope.cos = keep_cos->data_ptr();
  rope.sin = keep_sin->data_ptr();
  rope.kind = KindOf(cos, "cos");
  rope.bstride = cos.size(0) == 1 ? 0 : cos.size(1) * hd;
  rope.lstride = hd;
  return rope;
}


// ---- Vectorized fast paths ---------------------------------------------
// One dtype T for the activations (x, dy, the residual, the outputs, and
// cos/sin), rows a multiple of 16 bytes and 16-byte aligned: 16-byte loads
// and stores, fixed columns per thread (the row stays in registers between
// the reduction and the store, so each element is read once), 32-bit row
// arithmetic, and weight gradients reduced per block into an fp32 partial
// buffer summed afterwards (deterministic; no atomics). The generic kernels
// above remain for everything else (mixed dtypes, odd sizes, misalignment).
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements a 16-byte access

template <typename T>
__device__ __forceinline__ void LoadVec(const T* p, float* f) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) f[i] = ToFloat(e[i]);
}

// Stores f rounded to T and leaves the rounded values in f.
template <typename T>
__device__ __forceinline__ void StoreVec(T* p, float* f) {
  uint4 u;
  T* e = reinterpret_cast<T*>(&u);
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) {
    e[i] = FromFloat<T>(f[i]);
    f[i] = ToFloat(e[i]);
  }
  *reinterpret_cast<uint4*>(p) = u;
}

// Sum over aligned groups of `width` lanes (a power of two <= 32); every lane
// of the warp must call it.
__device__ __forceinline__ float GroupSum(float v, int width) {
  for (int o = width >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// RMSNorm, one row a block, K vectors a thread; with `res`, h = res + norm(x)
// into y and norm(h; s2) into y2 (when non-null), as RmsNormFwdKernel.
template <typename T, int K>
__global__ void RmsNormFwdVecKernel(const T* __restrict__ x, const T* __restrict__ res,
                                    Scale s1, Scale s2, float eps, int n,
                                    T* __restrict__ y, T* __restrict__ y2,
                                    float* __restrict__ rstd) {
  // Chained (model/cuda_launch.cuh): nothing to do before the wait.
  LetDependentsLaunch();
  WaitForPredecessor();
  constexpr int V = kVec<T>;
  __shared__ float scratch[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  const int nvec = n / V;
  float v[K][V];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < nvec) {
      LoadVec(x + base + c * V, v[k]);
#pragma unroll
      for (int i = 0; i < V; ++i) ss += v[k][i] * v[k][i];
    }
  }
  ss = BlockSum(ss, scratch);
  const float r = rsqrtf(ss / static_cast<float>(n) + eps);
  if (rstd != nullptr && threadIdx.x == 0) rstd[blockIdx.x] = r;
  float ss2 = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c >= nvec) continue;
    float rv[V];
    if (res != nullptr) LoadVec(res + base + c * V, rv);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float t = v[k][i] * r * s1(c * V + i);
      v[k][i] = res != nullptr ? rv[i] + t : t;
    }
    StoreVec(y + base + c * V, v[k]);
#pragma unroll
    for (int i = 0; i < V; ++i) ss2 += v[k][i] * v[k][i];
  }
  if (res == nullptr || y2 == nullptr) return;  // the whole block
  ss2 = BlockSum(ss2, scratch);
  const float r2 = rsqrtf(ss2 / static_cast<float>(n) + eps);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c >= nvec) continue;
#pragma unroll
    for (int i = 0; i < V; ++i) v[k][i] *= r2 * s2(c * V + i);
    StoreVec(y2 + base + c * V, v[k]);
  }
}

// RMSNorm backward, rows strided over the grid; dw partial sums per block
// into dw_part [gridDim.x, n].
template <typename T, int K>
__global__ void RmsNormBwdVecKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                    const float* __restrict__ rstd, Scale s, int n,
                                    int64_t rows, T* __restrict__ dx,
                                    float* __restrict__ dw_part) {
  constexpr int V = kVec<T>;
  __shared__ float scratch[32];
  const int nvec = n / V;
  float sc[K][V], acc[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      sc[k][i] = c < nvec ? s(c * V + i) : 0.f;
      acc[k][i] = 0.f;
    }
  }
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * n;
    const float r = rstd[row];
    float d[K][V], xh[K][V];
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c = threadIdx.x + k * blockDim.x;
      if (c >= nvec) continue;
      LoadVec(dy + base + c * V, d[k]);
      LoadVec(x + base + c * V, xh[k]);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        xh[k][i] *= r;
        dot += d[k][i] * sc[k][i] * xh[k][i];
      }
    }
    dot = BlockSum(dot, scratch) / static_cast<float>(n);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c = threadIdx.x + k * blockDim.x;
      if (c >= nvec) continue;
      float out[V];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        acc[k][i] += d[k][i] * xh[k][i];
        out[i] = r * (d[k][i] * sc[k][i] - xh[k][i] * dot);
      }
      StoreVec(dx + base + c * V, out);
    }
  }
  if (dw_part == nullptr) return;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c >= nvec) continue;
    float* p = dw_part + static_cast<int64_t>(blockIdx.x) * n + c * V;
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = acc[k][i];
  }
}

// Row r of x [B, L, ...] -> element offset, with b and l; 32-bit division.
__device__ __forceinline__ int64_t RowOffset32(const Lead& ld, uint32_t r,
                                               uint32_t* b, uint32_t* l) {
  int64_t off = 0;
  for (int k = ld.nd - 1; k >= 0; --k) {
    const uint32_t size = static_cast<uint32_t>(ld.size[k]);
    const uint32_t i = r % size;
    r /= size;
    off += static_cast<int64_t>(i) * ld.stride[k];
    if (k == 0) *b = i;
    if (k == 1) *l = i;
  }
  return off;
}

// The rope on one lane's vectors of a row's two halves, lo (at `at`) and hi
// (at `at + half`): lo * cos - hi * sin and hi * cos + lo * sin, or with
// `transpose` its transpose (the backward: sin of the other half, negated).
template <typename T>
__device__ __forceinline__ void RotatePair(const T* cos, const T* sin, int64_t at, int half,
                                           bool transpose, float* lo, float* hi) {
  constexpr int V = kVec<T>;
  float ca[V], sa[V], cb[V], sb[V];
  LoadVec(cos + at, ca);
  LoadVec(sin + at, sa);
  LoadVec(cos + at + half, cb);
  LoadVec(sin + at + half, sb);
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const float l = lo[i], h = hi[i];
    lo[i] = transpose ? l * ca[i] + h * sb[i] : l * ca[i] - h * sa[i];
    hi[i] = transpose ? h * cb[i] - l * sa[i] : h * cb[i] + l * sb[i];
  }
}

// q and k of a fused qkv projection in one launch (g > 0): of each group of
// g + 1 rows, rows j < g are q heads (out to y at row base * g + j, scale s,
// rstd), row g is the k head (out to y2 at row base, scale s2, rstd2).
template <typename T>
struct QkRows {
  int g = 0;
  Scale s2{nullptr, 0, 0.f};
  T* y2 = nullptr;
  float* rstd2 = nullptr;
};

// Per-head norm + rope: a group of G lanes a row, each lane owning K vectors
// of the first half and the matching K of the second (the rope's pairs).
template <typename T, int K>
__global__ void NormRopeFwdVecKernel(const T* __restrict__ x, Lead ld, int rows,
                                     int hd, int G, bool norm, Scale s, float eps,
                                     const T* __restrict__ cos, const T* __restrict__ sin,
                                     int64_t cos_bstride, T* __restrict__ y,
                                     float* __restrict__ rstd, QkRows<T> qk) {
  // Chained (model/cuda_launch.cuh): nothing to do before the wait.
  LetDependentsLaunch();
  WaitForPredecessor();
  constexpr int V = kVec<T>;
  const int gl = threadIdx.x % G;
  const int row = blockIdx.x * (blockDim.x / G) + threadIdx.x / G;
  const bool valid = row < rows;  // lanes past the end still shuffle
  int64_t out_row = row;
  if (qk.g > 0) {
    const int j = row % (qk.g + 1), base = row / (qk.g + 1);
    out_row = static_cast<int64_t>(base) * qk.g + j;
    if (j == qk.g) {
      out_row = base;
      s = qk.s2;
      y = qk.y2;
      rstd = qk.rstd2;
    }
  }
  const int half = hd / 2;
  uint32_t b = 0, l = 0;
  const int64_t xo = valid ? RowOffset32(ld, row, &b, &l) : 0;
  float a[K][V], c2[K][V];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = (gl + k * G) * V;
    if (valid) {
      LoadVec(x + xo + j, a[k]);
      LoadVec(x + xo + half + j, c2[k]);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) a[k][i] = c2[k][i] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < V; ++i) ss += a[k][i] * a[k][i] + c2[k][i] * c2[k][i];
  }
  if (norm) {
    const float r = rsqrtf(GroupSum(ss, G) / static_cast<float>(hd) + eps);
    if (valid && rstd != nullptr && gl == 0) rstd[out_row] = r;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = (gl + k * G) * V;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        a[k][i] *= r * s(j + i);
        c2[k][i] *= r * s(half + j + i);
      }
    }
  }
  if (!valid) return;
  const int64_t yo = out_row * hd;
  const int64_t co = b * cos_bstride + static_cast<int64_t>(l) * hd;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = (gl + k * G) * V;
    if (cos != nullptr) RotatePair(cos, sin, co + j, half, false, a[k], c2[k]);
    StoreVec(y + yo + j, a[k]);
    StoreVec(y + yo + half + j, c2[k]);
  }
}

// Its backward: dx through the rope's transpose and the norm; rows strided
// over the grid; dw per block into dw_part [gridDim.x, hd] (shared memory:
// blockDim.x * 2 * K * V floats).
template <typename T, int K>
__global__ void NormRopeBwdVecKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                     Lead ld, int rows, int hd, int G, bool norm,
                                     const float* __restrict__ rstd, Scale s,
                                     const T* __restrict__ cos, const T* __restrict__ sin,
                                     int64_t cos_bstride, T* __restrict__ dx, Lead dld,
                                     float* __restrict__ dw_part) {
  constexpr int V = kVec<T>;
  extern __shared__ float dws[];
  const int gl = threadIdx.x % G, group = threadIdx.x / G;
  const int groups = blockDim.x / G;
  const int half = hd / 2;
  float sa_[K][V], sb_[K][V], acc_a[K][V], acc_b[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = (gl + k * G) * V;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      sa_[k][i] = norm ? s(j + i) : 1.f;
      sb_[k][i] = norm ? s(half + j + i) : 1.f;
      acc_a[k][i] = acc_b[k][i] = 0.f;
    }
  }
  const int stride = gridDim.x * groups;
  const int first = blockIdx.x * groups + group;
  // Every lane runs the same number of iterations (the shuffles need them all).
  const int iters = (rows + stride - 1) / stride;
  for (int it = 0; it < iters; ++it) {
    const int row = first + it * stride;
    const bool valid = row < rows;
    uint32_t b = 0, l = 0;
    const int64_t xo = valid ? RowOffset32(ld, row, &b, &l) : 0;
    const int64_t dxo = valid ? RowOffset32(dld, row, &b, &l) : 0;
    const int64_t go = static_cast<int64_t>(row) * hd;
    const int64_t co = b * cos_bstride + static_cast<int64_t>(l) * hd;
    float ga[K][V], gb[K][V], xa[K][V], xb[K][V];
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = (gl + k * G) * V;
      if (!valid) {
#pragma unroll
        for (int i = 0; i < V; ++i) ga[k][i] = gb[k][i] = xa[k][i] = xb[k][i] = 0.f;
        continue;
      }
      LoadVec(dy + go + j, ga[k]);
      LoadVec(dy + go + half + j, gb[k]);
      if (cos != nullptr) RotatePair(cos, sin, co + j, half, true, ga[k], gb[k]);
      if (norm) {
        LoadVec(x + xo + j, xa[k]);
        LoadVec(x + xo + half + j, xb[k]);
      }
    }
    if (!norm) {
      if (valid) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int j = (gl + k * G) * V;
          StoreVec(dx + dxo + j, ga[k]);
          StoreVec(dx + dxo + half + j, gb[k]);
        }
      }
      continue;
    }
    const float r = valid ? rstd[row] : 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        xa[k][i] *= r;
        xb[k][i] *= r;
        dot += ga[k][i] * sa_[k][i] * xa[k][i] + gb[k][i] * sb_[k][i] * xb[k][i];
      }
    }
    dot = GroupSum(dot, G) / static_cast<float>(hd);
    if (!valid) continue;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = (gl + k * G) * V;
      float oa[V], ob[V];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        acc_a[k][i] += ga[k][i] * xa[k][i];
        acc_b[k][i] += gb[k][i] * xb[k][i];
        oa[i] = r * (ga[k][i] * sa_[k][i] - xa[k][i] * dot);
        ob[i] = r * (gb[k][i] * sb_[k][i] - xb[k][i] * dot);
      }
      StoreVec(dx + dxo + j, oa);
      StoreVec(dx + dxo + half + j, ob);
    }
  }
  if (dw_part == nullptr) return;  // the whole block
  // Each group's columns into shared memory [groups, hd], then one sum per
  // column for the block.
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = (gl + k * G) * V;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      dws[group * hd + j + i] = acc_a[k][i];
      dws[group * hd + half + j + i] = acc_b[k][i];
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < hd; j += blockDim.x) {
    float t = 0.f;
    for (int g = 0; g < groups; ++g) t += dws[g * hd + j];
    dw_part[static_cast<int64_t>(blockIdx.x) * hd + j] = t;
  }
}

// gelu_tanh(gate) * up: grid.x over column vectors, grid.y over rows.
// Forward (dy null): out = gelu(gate) * up [rows, inter]; backward:
// out = d(gate_up) [rows, 2 * inter].
template <typename T>
__global__ void GeluMulVecKernel(const T* __restrict__ gu, const T* __restrict__ dy,
                                 int64_t rows, int inter, T* __restrict__ out) {
  // Chained (model/cuda_launch.cuh): nothing to do before the wait.
  LetDependentsLaunch();
  WaitForPredecessor();
  constexpr int V = kVec<T>;
  const int nvec = inter / V;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const T* g = gu + row * 2 * inter;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < nvec;
         c += gridDim.x * blockDim.x) {
      float gv[V], uv[V], d[V];
      LoadVec(g + c * V, gv);
      LoadVec(g + inter + c * V, uv);
      if (dy != nullptr) LoadVec(dy + row * inter + c * V, d);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        float v, slope;
        GeluTanh(gv[i], &v, &slope);
        if (dy == nullptr) {
          gv[i] = v * uv[i];
        } else {
          gv[i] = d[i] * uv[i] * slope;
          uv[i] = d[i] * v;
        }
      }
      if (dy == nullptr) {
        StoreVec(out + row * inter + c * V, gv);
      } else {
        StoreVec(out + row * 2 * inter + c * V, gv);
        StoreVec(out + row * 2 * inter + inter + c * V, uv);
      }
    }
  }
}

// Runs f(T{}) with T the CUDA type of `t`; false for other dtypes.
template <typename F>
bool ByDtype(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat:
      f(float{});
      return true;
    case at::kBFloat16:
      f(__nv_bfloat16{});
      return true;
    case at::kHalf:
      f(__half{});
      return true;
    default:
      return false;
  }
}

int VecOf(at::ScalarType t) { return 16 / static_cast<int>(c10::elementSize(t)); }

bool Aligned(const at::Tensor& t) {
  return !t.defined() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// Whether rows of n elements of `x` (and the same-dtype `others`) take the
// vectorized path: float/bf16/fp16, n a whole number of 16-byte vectors,
// every pointer 16-byte aligned.
bool VecRows(const at::Tensor& x, int64_t n, std::initializer_list<at::Tensor> others) {
  const at::ScalarType t = x.scalar_type();
  if (t != at::kFloat && t != at::kBFloat16 && t != at::kHalf) return false;
  if (n <= 0 || n % VecOf(t) != 0 || !Aligned(x)) return false;
  for (const at::Tensor& o : others) {
    if (o.defined() && (o.scalar_type() != t || !Aligned(o))) return false;
  }
  return true;
}

// Vectors a thread for a row of nvec vectors in one block (0: too long).
int VectorsPerThread(int64_t nvec) {
  if (nvec <= 1024) return 1;
  if (nvec <= 2048) return 2;
  if (nvec <= 4096) return 4;
  return 0;
}

int BlockThreads(int64_t nvec, int k) {
  const int64_t t = (nvec + k - 1) / k;
  return static_cast<int>(std::max<int64_t>(32, (t + 31) / 32 * 32));
}

// Launches GeluMulVecKernel (forward when dy is undefined); false when the
// fast path does not apply. grid.x spans a row, grid.y the rows (each block
// strides over rows past 65535).
bool GeluMulVec(const at::Tensor& gu, const at::Tensor& dy, at::Tensor& out) {
  const int64_t inter = gu.size(-1) / 2;
  if (!VecRows(gu, inter, {dy, out})) return false;
  constexpr int kThreads = 256;
  const int64_t rows = gu.numel() / (2 * inter);
  const int64_t nvec = inter / VecOf(gu.scalar_type());
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((nvec + kThreads - 1) / kThreads, 1024)),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  return ByDtype(gu.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    LaunchChained(GeluMulVecKernel<T>, grid, dim3(kThreads), 0,
                  static_cast<const T*>(gu.data_ptr()),
                  dy.defined() ? static_cast<const T*>(dy.data_ptr()) : nullptr,
                  rows, static_cast<int>(inter), static_cast<T*>(out.data_ptr()));
  });
}

// Launches the RMSNorm forward fast path; false when it does not apply.
bool RmsNormFwdVec(const at::Tensor& x, const at::Tensor& res, const Scale& s1,
                   const Scale& s2, float eps, int64_t n, int64_t rows, at::Tensor& y,
                   const at::Tensor& y2, float* rstd) {
  if (!VecRows(x, n, {res, y, y2}) || rows > INT32_MAX) return false;
  const int64_t nvec = n / VecOf(x.scalar_type());
  const int k = VectorsPerThread(nvec);
  if (k == 0) return false;
  const int threads = BlockThreads(nvec, k);
  return ByDtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    auto p = [](const at::Tensor& t) {
      return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
    };
    auto launch = [&](auto kernel) {
      LaunchChained(kernel, dim3(static_cast<unsigned>(rows)), dim3(threads), 0,
                    p(x), p(res), s1, s2, eps, static_cast<int>(n), p(y), p(y2),
                    rstd);
    };
    if (k == 1) launch(RmsNormFwdVecKernel<T, 1>);
    else if (k == 2) launch(RmsNormFwdVecKernel<T, 2>);
    else launch(RmsNormFwdVecKernel<T, 4>);
  });
}

// The norm+rope fast path's shape: K vectors of each half a lane, G lanes a
// row (a power of two <= 32); k == 0 when it does not apply.
struct RopeVec {
  int k = 0, g = 0;
};

RopeVec RopeVecOf(const at::Tensor& x, const Lead& ld, const at::Tensor& cos,
                  const at::Tensor& sin, std::initializer_list<at::Tensor> others,
                  const Lead* other_lead = nullptr) {
  const int64_t hd = x.size(-1);
  if (hd % 2 != 0 || x.numel() / hd > INT32_MAX) return {};
  if (!VecRows(x, hd / 2, others)) return {};
  const at::ScalarType t = x.scalar_type();
  if (cos.defined() && (cos.scalar_type() != t || sin.scalar_type() != t)) return {};
  const int v = VecOf(x.scalar_type());
  for (const Lead* l : {&ld, other_lead}) {
    if (l == nullptr) continue;
    for (int k = 0; k < l->nd; ++k) {
      if (l->stride[k] % v != 0 || l->size[k] > INT32_MAX) return {};
    }
  }
  const int64_t nvec = hd / 2 / v;
  const int k = nvec <= 32 ? 1 : (nvec <= 64 && nvec % 2 == 0 ? 2 : 0);
  if (k == 0) return {};
  const int64_t g = nvec / k;
  if ((g & (g - 1)) != 0) return {};
  return RopeVec{k, static_cast<int>(g)};
}

// Launches NormRopeFwdVecKernel over `rows` rows of x (lead `ld`); false
// when the fast path does not apply. With qk_g > 0, x's rows are q and k
// heads as QkRows says, k's going to y2 (scale s2, rstd2).
bool NormRopeFwdVec(const at::Tensor& x, const Lead& ld, int64_t rows, bool norm,
                    const Scale& s, double eps, const Rope& rope, const at::Tensor& keep_cos,
                    const at::Tensor& keep_sin, const at::Tensor& y, float* rstd,
                    int qk_g = 0, const Scale& s2 = Scale{nullptr, kF32, 0.f},
                    const at::Tensor& y2 = {}, float* rstd2 = nullptr) {
  const int64_t hd = x.size(-1);
  const RopeVec rv = RopeVecOf(x, ld, keep_cos, keep_sin, {y, y2, keep_cos, keep_sin});
  if (rv.k == 0) return false;
  constexpr int kThreads = 256;
  const int64_t per_block = kThreads / rv.g;
  const int64_t blocks = (rows + per_block - 1) / per_block;
  return ByDtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    QkRows<T> qk;
    if (qk_g > 0) qk = QkRows<T>{qk_g, s2, static_cast<T*>(y2.data_ptr()), rstd2};
    auto launch = [&](auto kernel) {
      LaunchChained(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0,
                    static_cast<const T*>(x.data_ptr()), ld, static_cast<int>(rows),
                    static_cast<int>(hd), rv.g, norm, s, static_cast<float>(eps),
                    static_cast<const T*>(rope.cos), static_cast<const T*>(rope.sin),
                    rope.bstride, static_cast<T*>(y.data_ptr()), rstd, qk);
    };
    if (rv.k == 1) launch(NormRopeFwdVecKernel<T, 1>);
    else launch(NormRopeFwdVecKernel<T, 2>);
  });
}
}  // namespace

at::Tensor RmsNormForward(const at::Tensor& x_in, const at::Tensor& w,
                          double offset, double eps, at::Tensor* rstd) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() >= 1, "fused norm: x must be CUDA");
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  const Scale s = MakeScale(w, offset, n);
  at::Tensor y = at::empty_like(x);
  if (rstd != nullptr) *rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return y;
  float* rstd_p = rstd != nullptr ? rstd->data_ptr<float>() : nullptr;
  if (RmsNormFwdVec(x, {}, s, Scale{nullptr, kF32, 0.f}, static_cast<float>(eps), n,
                    rows, y, {}, rstd_p)) {
    return y;
  }
  RmsNormFwdKernel<<<rows, Threads(n, rows), 0,
                     at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr(), nullptr, KindOf(x, "x"), s, Scale{nullptr, kF32, 0.f},
      static_cast<float>(eps), n, y.data_ptr(), nullptr, rstd_p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::pair<at::Tensor, at::Tensor> RmsNormBackward(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& rstd,
    const at::Tensor& w, double offset, bool want_dw) {
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  TORCH_CHECK(dy.sizes() == x.sizes(), "fused norm backward: dy ", dy.sizes(),
              " for x ", x.sizes());
  const int64_t n = x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  const Scale s = MakeScale(w, offset, n);
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw;
  const bool with_dw = want_dw && w.defined();
  const int64_t nvec = n / VecOf(x.scalar_type());
  const int vk = VecRows(x, n, {dy, dx}) ? VectorsPerThread(nvec) : 0;
  if (rows > 0 && vk > 0) {
    const int threads = BlockThreads(nvec, vk);
    const int64_t blocks = std::min<int64_t>(
        rows, static_cast<int64_t>(SmCount()) * std::max(1, 2048 / threads));
    at::Tensor part;
    if (with_dw) part = at::empty({blocks, n}, x.options().dtype(at::kFloat));
    auto stream = at::cuda::getCurrentCUDAStream();
    ByDtype(x.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      auto launch = [&](auto kernel) {
        kernel<<<blocks, threads, 0, stream>>>(
            static_cast<const T*>(dy.data_ptr()), static_cast<const T*>(x.data_ptr()),
            rstd.data_ptr<float>(), s, static_cast<int>(n), rows,
            static_cast<T*>(dx.data_ptr()), with_dw ? part.data_ptr<float>() : nullptr);
      };
      if (vk == 1) launch(RmsNormBwdVecKernel<T, 1>);
      else if (vk == 2) launch(RmsNormBwdVecKernel<T, 2>);
      else launch(RmsNormBwdVecKernel<T, 4>);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (with_dw) dw = part.sum(0).to(w.scalar_type());
    return {dx, dw};
  }
  if (with_dw) dw = at::zeros({n}, x.options().dtype(at::kFloat));
  if (rows > 0) {
    const int blocks =
        static_cast<int>(std::min<int64_t>(rows, static_cast<int64_t>(SmCount()) * 2));
    const size_t smem = (32 + (with_dw ? n : 0)) * sizeof(float);
    RmsNormBwdKernel<<<blocks, Threads(n, rows), smem,
                       at::cuda::getCurrentCUDAStream()>>>(
        dy.data_ptr(), KindOf(dy, "dy"), x.data_ptr(), KindOf(x, "x"),
        rstd.data_ptr<float>(), s, n, rows, dx.data_ptr(),
        with_dw ? dw.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (with_dw) dw = dw.to(w.scalar_type());
  return {dx, dw};
}

std::pair<at::Tensor, at::Tensor> ResidualRmsNorm(const at::Tensor& residual_in,
                                                  const at::Tensor& x_in,
                                                  const at::Tensor& w,
                                                  const at::Tensor& w2,
                                                  double offset, double eps) {
  c10::cuda::CUDAGuard guard(x_in.device());
  TORCH_CHECK(residual_in.sizes() == x_in.sizes() &&
                  residual_in.scalar_type() == x_in.scalar_type(),
              "fused residual norm: residual ", residual_in.sizes(),
              " and x ", x_in.sizes(), " must match in shape and dtype");
  const at::Tensor x = x_in.contiguous(), res = residual_in.contiguous();
  const int64_t n = x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  const Scale s1 = MakeScale(w, offset, n);
  const Scale s2 = w2.defined() ? MakeScale(w2, offset, n) : Scale{nullptr, kF32, 0.f};
  at::Tensor h = at::empty_like(x);
  at::Tensor y = w2.defined() ? at::empty_like(x) : at::Tensor();
  if (rows == 0) return {h, y};
  if (RmsNormFwdVec(x, res, s1, s2, static_cast<float>(eps), n, rows, h, y, nullptr)) {
    return {h, y};
  }
  RmsNormFwdKernel<<<rows, Threads(n, rows), 0,
                     at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr(), res.data_ptr(), KindOf(x, "x"), s1, s2,
      static_cast<float>(eps), n, h.data_ptr(),
      w2.defined() ? y.data_ptr() : nullptr, nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {h, y};
}

at::Tensor NormRopeForward(const at::Tensor& x, bool norm, const at::Tensor& w,
                           double offset, double eps, const at::Tensor& cos,
                           const at::Tensor& sin, at::Tensor* rstd) {
  TORCH_CHECK(x.is_cuda(), "fused norm+rope: x must be CUDA");
  c10::cuda::CUDAGuard guard(x.device());
  const Lead ld = LeadOf(x);
  const int64_t hd = x.size(-1), rows = hd == 0 ? 0 : x.numel() / hd;
  const Scale s = norm ? MakeScale(w, offset, hd) : Scale{nullptr, kF32, 0.f};
  at::Tensor keep_cos, keep_sin;
  const Rope rope = RopeOf(x, cos, sin, &keep_cos, &keep_sin);
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (rstd != nullptr && norm)
    *rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return y;
  if (NormRopeFwdVec(x, ld, rows, norm, s, eps, rope, keep_cos, keep_sin, y,
                     rstd != nullptr && norm ? rstd->data_ptr<float>() : nullptr)) {
    return y;
  }
  constexpr int kThreads = 256;  // 8 rows a block
  const int64_t blocks = (rows + 7) / 8;
  NormRopeFwdKernel<<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr(), KindOf(x, "x"), ld, rows, hd, norm, s,
      static_cast<float>(eps), rope, y.data_ptr(),
      rstd != nullptr && norm ? rstd->data_ptr<float>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::pair<at::Tensor, at::Tensor> QkNormRopeForward(
    const at::Tensor& y, int64_t g, const at::Tensor& q_w, const at::Tensor& k_w,
    double offset, double eps, const at::Tensor& cos, const at::Tensor& sin,
    at::Tensor* rstd_q, at::Tensor* rstd_k) {
  TORCH_CHECK(y.is_cuda() && y.dim() == 5 && g >= 1 && y.size(3) == g + 2,
              "fused q/k norm+rope: y must be CUDA [B, L, nkv, g + 2, hd] with g = ", g,
              ", got ", y.sizes());
  c10::cuda::CUDAGuard guard(y.device());
  const at::Tensor x = y.narrow(3, 0, g + 1);
  const Lead ld = LeadOf(x);
  const int64_t hd = y.size(-1), rows = x.numel() / std::max<int64_t>(hd, 1);
  at::Tensor keep_cos, keep_sin;
  const Rope rope = RopeOf(x, cos, sin, &keep_cos, &keep_sin);
  at::Tensor q = at::empty({y.size(0), y.size(1), y.size(2), g, hd}, y.options());
  at::Tensor k = at::empty({y.size(0), y.size(1), y.size(2), hd}, y.options());
  const auto f32 = y.options().dtype(at::kFloat);
  if (rstd_q != nullptr) *rstd_q = at::empty({q.numel() / std::max<int64_t>(hd, 1)}, f32);
  if (rstd_k != nullptr) *rstd_k = at::empty({k.numel() / std::max<int64_t>(hd, 1)}, f32);
  if (rows > 0 &&
      NormRopeFwdVec(x, ld, rows, true, MakeScale(q_w, offset, hd), eps, rope, keep_cos,
                     keep_sin, q, rstd_q != nullptr ? rstd_q->data_ptr<float>() : nullptr,
                     static_cast<int>(g), MakeScale(k_w, offset, hd), k,
                     rstd_k != nullptr ? rstd_k->data_ptr<float>() : nullptr)) {
    return {q, k};
  }
  q = NormRopeForward(y.narrow(3, 0, g), true, q_w, offset, eps, cos, sin, rstd_q);
  k = NormRopeForward(y.select(3, g), true, k_w, offset, eps, cos, sin, rstd_k);
  return {q, k};
}

std::pair<at::Tensor, at::Tensor> NormRopeBackward(
    const at::Tensor& dy_in, const at::Tensor& x, const at::Tensor& rstd,
    bool norm, const at::Tensor& w, double offset, const at::Tensor& cos,
    const at::Tensor& sin, bool want_dw, const at::Tensor& dx_into) {
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor dy = dy_in.contiguous();
  TORCH_CHECK(dy.sizes() == x.sizes(), "fused norm+rope backward: dy ",
              dy.sizes(), " for x ", x.sizes());
  const Lead ld = LeadOf(x);
  const int64_t hd = x.size(-1), rows = hd == 0 ? 0 : x.numel() / hd;
  const Scale s = norm ? MakeScale(w, offset, hd) : Scale{nullptr, kF32, 0.f};
  at::Tensor keep_cos, keep_sin;
  const Rope rope = RopeOf(x, cos, sin, &keep_cos, &keep_sin);
  at::Tensor dx = dx_into.defined() ? dx_into : at::empty(x.sizes(), x.options());
  TORCH_CHECK(dx.sizes() == x.sizes() && dx.scalar_type() == x.scalar_type() &&
                  dx.device() == x.device(),
              "fused norm+rope backward: dx ", dx.sizes(), " for x ", x.sizes());
  const Lead dld = LeadOf(dx);
  const bool with_dw = want_dw && norm && w.defined();
  at::Tensor dw;
  const RopeVec rv = rows > 0 && dld.nd == ld.nd
                         ? RopeVecOf(x, ld, keep_cos, keep_sin, {dy, dx, keep_cos, keep_sin}, &dld)
                         : RopeVec{};
  if (rv.k > 0) {
    constexpr int kThreads = 256;
    const int64_t per_block = kThreads / rv.g;
    const int64_t blocks = std::min<int64_t>((rows + per_block - 1) / per_block,
                                             static_cast<int64_t>(SmCount()) * 8);
    at::Tensor part;
    if (with_dw) part = at::empty({blocks, hd}, x.options().dtype(at::kFloat));
    const size_t smem = with_dw ? kThreads * 2 * rv.k * VecOf(x.scalar_type()) * sizeof(float) : 0;
    auto stream = at::cuda::getCurrentCUDAStream();
    ByDtype(x.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      auto launch = [&](auto kernel) {
        kernel<<<blocks, kThreads, smem, stream>>>(
            static_cast<const T*>(dy.data_ptr()), static_cast<const T*>(x.data_ptr()), ld,
            static_cast<int>(rows), static_cast<int>(hd), rv.g, norm,
            norm ? rstd.data_ptr<float>() : nullptr, s, static_cast<const T*>(rope.cos),
            static_cast<const T*>(rope.sin), rope.bstride, static_cast<T*>(dx.data_ptr()),
            dld, with_dw ? part.data_ptr<float>() : nullptr);
      };
      if (rv.k == 1) launch(NormRopeBwdVecKernel<T, 1>);
      else launch(NormRopeBwdVecKernel<T, 2>);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (with_dw) dw = part.sum(0).to(w.scalar_type());
    return {dx, dw};
  }
  if (with_dw) dw = at::zeros({hd}, x.options().dtype(at::kFloat));
  if (rows > 0) {
    constexpr int kThreads = 256;
    const int64_t blocks = std::min<int64_t>(
        (rows + 7) / 8, static_cast<int64_t>(SmCount()) * 4);
    NormRopeBwdKernel<<<blocks, kThreads, with_dw ? hd * sizeof(float) : 0,
                        at::cuda::getCurrentCUDAStream()>>>(
        dy.data_ptr(), KindOf(dy, "dy"), x.data_ptr(), KindOf(x, "x"), ld,
        rows, hd, norm, norm ? rstd.data_ptr<float>() : nullptr, s, rope,
        dx.data_ptr(), dld, with_dw ? dw.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (with_dw) dw = dw.to(w.scalar_type());
  return {dx, dw};
}

at::Tensor GeluMulForward(const at::Tensor& gate_up_in) {
  c10::cuda::CUDAGuard guard(gate_up_in.device());
  const at::Tensor gu = gate_up_in.contiguous();
  TORCH_CHECK(gu.is_cuda() && gu.dim() >= 1 && gu.size(-1) % 2 == 0,
              "fused gelu*up: gate_up must be CUDA [..., 2I], got ", gu.sizes());
  const int64_t inter = gu.size(-1) / 2;
  std::vector<int64_t> shape = gu.sizes().vec();
  shape.back() = inter;
  at::Tensor y = at::empty(shape, gu.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  constexpr int kThreads = 256;
  if (GeluMulVec(gu, {}, y)) return y;
  GeluMulFwdKernel<<<ElementwiseBlocks(total, kThreads), kThreads, 0,
                     at::cuda::getCurrentCUDAStream()>>>(
      gu.data_ptr(), KindOf(gu, "gate_up"), inter, total, y.data_ptr());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor GeluMulBackward(const at::Tensor& dy_in, const at::Tensor& gate_up_in) {
  c10::cuda::CUDAGuard guard(gate_up_in.device());
  const at::Tensor gu = gate_up_in.contiguous(), dy = dy_in.contiguous();
  const int64_t inter = gu.size(-1) / 2;
  TORCH_CHECK(dy.numel() * 2 == gu.numel() && dy.size(-1) == inter,
              "fused gelu*up backward: dy ", dy.sizes(), " for gate_up ",
              gu.sizes());
  at::Tensor dgu = at::empty_like(gu);
  const int64_t total = dy.numel();
  if (total == 0) return dgu;
  constexpr int kThreads = 256;
  if (GeluMulVec(gu, dy, dgu)) return dgu;
  GeluMulBwdKernel<<<ElementwiseBlocks(total, kThreads), kThreads, 0,
                     at::cuda::getCurrentCUDAStream()>>>(
      dy.data_ptr(), KindOf(dy, "dy"), gu.data_ptr(), KindOf(gu, "gate_up"),
      inter, total, dgu.data_ptr());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dgu;
}

}  // namespace gemma::fused_cuda
