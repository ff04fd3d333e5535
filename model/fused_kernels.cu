// Fused CUDA kernels for the Gemma blocks: see model/fused_kernels.h.
//
// Each operand carries its dtype as a runtime tag (float, bf16, fp16), read
// into fp32 and stored rounded once, so one instantiation serves every
// dtype mix (bf16 activations with fp32 or bf16 norm weights). The kernels
// are memory-bound; coalesced scalar loads keep them near the bandwidth on
// the row sizes Gemma uses (head_dim 128-512, hidden 640-5376).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

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

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
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
__device__ __forceinline__ void GeluTanh(float g, float* value, float* slope) {
  constexpr float kA = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kB = 0.044715f;
  const float t = tanhf(kA * (g + kB * g * g * g));
  *value = 0.5f * g * (1.f + t);
  *slope = 0.5f * (1.f + t) + 0.5f * g * (1.f - t * t) * kA * (1.f + 3.f * kB * g * g);
}

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
  RmsNormFwdKernel<<<rows, Threads(n, rows), 0,
                     at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr(), nullptr, KindOf(x, "x"), s, Scale{nullptr, kF32, 0.f},
      static_cast<float>(eps), n, y.data_ptr(), nullptr,
      rstd != nullptr ? rstd->data_ptr<float>() : nullptr);
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
  constexpr int kThreads = 256;  // 8 rows a block
  const int64_t blocks = (rows + 7) / 8;
  NormRopeFwdKernel<<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr(), KindOf(x, "x"), ld, rows, hd, norm, s,
      static_cast<float>(eps), rope, y.data_ptr(),
      rstd != nullptr && norm ? rstd->data_ptr<float>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
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
  GeluMulBwdKernel<<<ElementwiseBlocks(total, kThreads), kThreads, 0,
                     at::cuda::getCurrentCUDAStream()>>>(
      dy.data_ptr(), KindOf(dy, "dy"), gu.data_ptr(), KindOf(gu, "gate_up"),
      inter, total, dgu.data_ptr());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dgu;
}

}  // namespace gemma::fused_cuda
