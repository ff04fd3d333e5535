// The few-row GEMV of model/gemv.h.
//
// Shape notation: x [M, K] (M = 1..4 rows, contiguous), W [N, K] row-major,
// y [M, N]; a "chunk" is 8 elements, one 16-byte copy; chunk column j of a
// row is its chunks 32 j .. 32 j + 31, one per lane.
//
// Work split. A block is kWarps warps. A warp owns a group of RW rows of W
// and, with k_split S > 1, one of S contiguous ranges of their chunk
// columns; a block holds kWarps / S groups. Lane l reads chunk l of each
// column (a warp's copy covers 512 contiguous bytes) of each of its rows,
// and the x chunks of the same columns (x is tiny and stays in L1/L2; one x
// chunk serves all RW rows). Each W byte is read once, for all M rows of x.
//
// Pipelining. A stage is U chunk columns: RW * U 16-byte cp.async copies per
// lane into a ring of P stages in shared memory, so (P - 1) * RW * U copies
// per lane are in flight while one stage is multiplied. (Loads into
// registers would not do: ptxas issues them a couple ahead of their use,
// whatever the source order.) A lane only reads back the slots it filled, so
// no barrier is needed. W copies bypass L1 (.cg); x loads go through the
// read-only cache.
//
// Reduction. fp32 accumulators per (row, x row) per lane, summed over the
// warp by an xor butterfly (every lane ends with the same bits), then lane i
// stores output i; with S > 1 the S warps of a group add their sums through
// shared memory in a fixed order. No atomics: the result is deterministic.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "model/cuda_launch.cuh"
#include "model/cuda_numeric.cuh"
#include "model/gemv.h"

namespace gemma::fused_cuda {
namespace {

constexpr int kWarps = 4;  // per block
constexpr int kThreads = 32 * kWarps;
constexpr int kChunk = 8;  // elements of one 16-byte copy
// Dynamic shared memory a launch may use without opting in.
constexpr int kMaxSmem = 48 * 1024;

// The (RW, U, P) combinations compiled: rows per warp, chunk columns per
// stage, stages in the ring. Shared memory per block: kWarps * P * U * RW *
// 512 bytes (at most 48 KiB). rw4 u2 p2 takes 32 KiB, so that, registers
// permitting, the next chained GEMV's blocks fit on an SM beside this one's
// (for gemv_bench --sweep; not swept on a GPU yet).
#define GEMMA_GEMV_CONFIGS(X)                                       \
  X(1, 8, 2) X(1, 8, 3) X(2, 4, 2) X(2, 4, 3) X(4, 2, 3) X(2, 2, 4) \
  X(4, 2, 2)

// Copies 16 bytes from global `src` to shared `dst` asynchronously, or
// writes zeros when !ok (src is then not read).
__device__ __forceinline__ void CopyAsync(uint4* dst, const uint4* src,
                                          bool ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d),
               "l"(src), "r"(ok ? 16 : 0)
               : "memory");
#else
  *dst = ok ? __ldg(src) : make_uint4(0, 0, 0, 0);
#endif
}

__device__ __forceinline__ void CommitCopies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed copy groups are pending.
template <int N>
__device__ __forceinline__ void WaitCopies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// A 16-byte load of x, zero when !ok, through the read-only cache (every
// warp of the grid reads the same x).
__device__ __forceinline__ uint4 LoadX(const uint4* p, bool ok) {
  uint4 v;
  asm("{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %5, 0;\n"
      "  mov.b32 %0, 0;\n"
      "  mov.b32 %1, 0;\n"
      "  mov.b32 %2, 0;\n"
      "  mov.b32 %3, 0;\n"
      "  @p ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      "}\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "r"(static_cast<int>(ok)));
  return v;
}

// The 8 values of a chunk as floats.
template <typename T>
__device__ __forceinline__ void Widen(const uint4& v, float (&f)[kChunk]) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      // bf16 is the top half of an fp32: widening is a shift or a mask.
      f[2 * i] = __uint_as_float(u[i] << 16);
      f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    } else {
      __half2 h;
      memcpy(&h, &u[i], sizeof(h));
      const float2 t = __half22float2(h);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  }
}

// Shared memory of a block's rings: rows_per_warp rw, unroll u, stages p.
__host__ __device__ constexpr int SmemBytes(int rw, int u, int p) {
  return kWarps * p * u * rw * 32 * 16;
}
template <int RW, int U, int P>
__host__ __device__ constexpr int SmemBytes() {
  return SmemBytes(RW, U, P);
}

// y[m, row] = sum_k x[m, k] * w[row, k] (+ bias[row]) for the rows of this
// block. n, k as in the shape notation; k_split in {1, 2, 4}. Dynamic shared
// memory: SmemBytes<RW, U, P>().
//
// With kGelu (RW even), w is [gate; up] with n rows each and y [M, n] is
// gelu_tanh(x gate^T) * (x up^T): a warp's first RW / 2 rows are gate rows
// and the others the up rows of the same outputs. Both sums are rounded to T
// first, so the result is bitwise the GEMV's followed by the gelu*up kernel.
//
// Chained launch (model/cuda_launch.cuh): the first P - 1 stages of weights
// are requested before waiting for the previous kernel, whose output x is.
template <typename T, int M, int RW, int U, int P, bool kGelu>
__global__ void __launch_bounds__(kThreads)
    GemvKernel(const T* __restrict__ x, const T* __restrict__ w,
               const T* __restrict__ bias, T* __restrict__ y, int n, int k,
               int k_split) {
  constexpr int RO = kGelu ? RW / 2 : RW;  // output rows a warp produces
  constexpr int kOut = RW * M;             // sums a warp produces
  constexpr int kOutY = RO * M;            // outputs a warp stores
  constexpr int kStage = U * RW * 32;      // uint4 slots of one warp's stage
  static_assert(kOut <= 32, "one sum per lane");
  static_assert(!kGelu || RW % 2 == 0, "gelu pairs need an even RW");
  static_assert(SmemBytes<RW, U, P>() <= kMaxSmem, "ring too large");
  extern __shared__ uint4 smem[];
  LetDependentsLaunch();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int groups = kWarps / k_split;
  const int group = warp % groups, split = warp / groups;
  const int64_t group0 = static_cast<int64_t>(blockIdx.x) * groups;
  const int64_t row0 = (group0 + group) * RO;
  const int chunks = k / kChunk;
  const int columns = (chunks + 31) / 32;
  const int per_split = (columns + k_split - 1) / k_split;
  const int j_begin = min(columns, split * per_split);
  int j_end = min(columns, j_begin + per_split);
  if (row0 >= n) j_end = j_begin;  // a group past the last row reads nothing
  const int stages = (j_end - j_begin + U - 1) / U;

  const uint4* wp[RW];
#pragma unroll
  for (int r = 0; r < RW; ++r) {
    // Rows past n (the last group of an odd n) re-read row n - 1, unstored.
    // With kGelu, rows RO.. are the up rows, n rows further on.
    const int64_t row = min(row0 + r % RO, static_cast<int64_t>(n - 1)) +
                        static_cast<int64_t>(r / RO) * n;
    wp[r] = reinterpret_cast<const uint4*>(w + row * k) + lane;
  }
  const uint4* xp = reinterpret_cast<const uint4*>(x) + lane;
  uint4* ring = smem + warp * (P * kStage) + lane;  // this lane's slots

  // Stage s: columns j_begin + s U .. + U - 1 into ring slot s % P.
  auto issue = [&](int s) {
    const int j = j_begin + s * U;
    uint4* dst = ring + (s % P) * kStage;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const bool ok = j + u < j_end && (j + u) * 32 + lane < chunks;
#pragma unroll
      for (int r = 0; r < RW; ++r) {
        CopyAsync(dst + (u * RW + r) * 32, ok ? wp[r] + (j + u) * 32 : wp[r],
                  ok);
      }
    }
  };

  float acc[RW][M];
#pragma unroll
  for (int r = 0; r < RW; ++r) {
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
  }

  // One commit per stage slot, empty ones included, so that "at most P - 1
  // groups pending" always means "stage s has landed".
#pragma unroll
  for (int s = 0; s < P - 1; ++s) {
    if (s < stages) issue(s);
    CommitCopies();
  }
  // The weights are in flight; x (and y) belong to the chain.
  WaitForPredecessor();
  for (int s = 0; s < stages; ++s) {
    if (s + P - 1 < stages) issue(s + P - 1);  // into the slot freed at s - 1
    CommitCopies();
    WaitCopies<P - 1>();
    const int j = j_begin + s * U;
    const uint4* src = ring + (s % P) * kStage;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const bool ok = j + u < j_end && (j + u) * 32 + lane < chunks;
      float wf[RW][kChunk];
#pragma unroll
      for (int r = 0; r < RW; ++r) Widen<T>(src[(u * RW + r) * 32], wf[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[kChunk];
        Widen<T>(LoadX(xp + m * chunks + (j + u) * 32, ok), xf);
#pragma unroll
        for (int r = 0; r < RW; ++r) {
#pragma unroll
          for (int e = 0; e < kChunk; ++e)
            acc[r][m] = fmaf(wf[r][e], xf[e], acc[r][m]);
        }
      }
    }
  }
  WaitCopies<0>();  // only empty groups can be pending; the ring is idle

  // Lane i keeps sum i (row i / M of the group, x row i % M); with kGelu,
  // lane i < kOutY also the up sum of its output (sum i + kOutY).
  float mine = 0.f, up = 0.f;
#pragma unroll
  for (int i = 0; i < kOut; ++i) {
    const float s = WarpSum(acc[i / M][i % M]);
    if (lane == i) mine = s;
    if (kGelu && lane + kOutY == i) up = s;
  }
  auto store = [&](int64_t row, int m, float v, float u) {
    if (row >= n) return;
    if constexpr (kGelu) {
      float g, slope;
      GeluTanh(ToFloat(FromFloat<T>(v)), &g, &slope);
      v = g * ToFloat(FromFloat<T>(u));
    } else if (bias != nullptr) {
      v += ToFloat(bias[row]);
    }
    y[m * static_cast<int64_t>(n) + row] = FromFloat<T>(v);
  };
  if (k_split == 1) {
    if (lane < kOutY) store(row0 + lane / M, lane % M, mine, up);
    return;
  }
  // Each warp's sums go to the start of its own (now idle) ring.
  auto partial = [&](int wi) {
    return reinterpret_cast<float*>(smem + wi * (P * kStage));
  };
  if (lane < kOut) partial(warp)[lane] = mine;
  if (kGelu && lane < kOutY) partial(warp)[kOut + lane] = up;
  __syncthreads();
  const int t = threadIdx.x;
  if (t < groups * kOutY) {
    const int g = t / kOutY, i = t % kOutY;
    float v = 0.f, u = 0.f;
    for (int s = 0; s < k_split; ++s) {
      v += partial(s * groups + g)[i];
      if (kGelu) u += partial(s * groups + g)[kOut + i];
    }
    store((group0 + g) * RO + i / M, i % M, v, u);
  }
}

// Blocks of a launch over n outputs with RO output rows a warp.
int64_t Blocks(int64_t n, int64_t ro, int k_split) {
  const int64_t groups = kWarps / k_split;
  return ((n + ro - 1) / ro + groups - 1) / groups;
}

template <typename T, int M, int RW, int U, int P, bool kGelu>
void Launch(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
            const at::Tensor& y, int k_split) {
  constexpr int RO = kGelu ? RW / 2 : RW;
  const int64_t n = kGelu ? w.size(0) / 2 : w.size(0), k = w.size(1);
  const int64_t blocks = Blocks(n, RO, k_split);
  LaunchChained(GemvKernel<T, M, RW, U, P, kGelu>,
                dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                SmemBytes<RW, U, P>(), static_cast<const T*>(x.data_ptr()),
                static_cast<const T*>(w.data_ptr()),
                bias.defined() ? static_cast<const T*>(bias.data_ptr())
                               : nullptr,
                static_cast<T*>(y.data_ptr()), static_cast<int>(n),
                static_cast<int>(k), k_split);
}

template <typename T, int M, bool kGelu>
void LaunchConfig(const at::Tensor& x, const at::Tensor& w,
                  const at::Tensor& bias, const at::Tensor& y,
                  const GemvConfig& c) {
#define GEMMA_GEMV_CASE(RW, U, P)                                     \
  if (c.rows_per_warp == RW && c.unroll == U && c.stages == P) {      \
    if constexpr (!kGelu || RW % 2 == 0) {                            \
      return Launch<T, M, RW, U, P, kGelu>(x, w, bias, y, c.k_split); \
    }                                                                 \
  }
  GEMMA_GEMV_CONFIGS(GEMMA_GEMV_CASE)
#undef GEMMA_GEMV_CASE
  TORCH_CHECK(false, "Gemv: rows_per_warp ", c.rows_per_warp, ", unroll ",
              c.unroll, ", stages ", c.stages, " is not compiled",
              kGelu ? " (gelu pairs need an even rows_per_warp)" : "");
}

template <typename T, bool kGelu>
void LaunchRows(int64_t m, const at::Tensor& x, const at::Tensor& w,
                const at::Tensor& bias, const at::Tensor& y,
                const GemvConfig& c) {
  switch (m) {
    case 1:
      return LaunchConfig<T, 1, kGelu>(x, w, bias, y, c);
    case 2:
      return LaunchConfig<T, 2, kGelu>(x, w, bias, y, c);
    case 3:
      return LaunchConfig<T, 3, kGelu>(x, w, bias, y, c);
    case 4:
      return LaunchConfig<T, 4, kGelu>(x, w, bias, y, c);
    default:
      TORCH_CHECK(false, "Gemv: ", m, " rows of x (at most ", kGemvMaxRows,
                  ")");
  }
}

bool Aligned16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// k_split for c's rows_per_warp and unroll: split K while the row groups
// alone leave the SMs short of warps (16 resident on each cover the
// latency) and each split keeps at least two stages.
int AutoSplit(int64_t n, int64_t k, const GemvConfig& c) {
  const int64_t columns = (k / kChunk + 31) / 32;
  const int64_t groups = (n + c.rows_per_warp - 1) / c.rows_per_warp;
  const int64_t want =
      16 * static_cast<int64_t>(
               at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  int split = 1;
  while (split < kWarps && groups * split < want &&
         columns >= 2 * 2 * split * c.unroll) {
    split *= 2;
  }
  return split;
}
}  // namespace

std::vector<GemvConfig> GemvCompiledConfigs() {
  std::vector<GemvConfig> out;
#define GEMMA_GEMV_ENTRY(RW, U, P) out.push_back(GemvConfig{RW, U, P, 0});
  GEMMA_GEMV_CONFIGS(GEMMA_GEMV_ENTRY)
#undef GEMMA_GEMV_ENTRY
  return out;
}

GemvConfig GemvAutoConfig(int64_t rows, int64_t n, int64_t k) {
  (void)rows;
  // From gemv_bench --sweep, chained, on an H100 (4B shapes, us a call):
  // rw4 u2 p3 with this split rule is within 4% of the best configuration
  // on every shape (qkv 7.6, o 4.0, gate_up 35.6, down 21.5, lm_head 431),
  // where the earlier rw2 u4 p3 took 7.7, 4.4, 36.1, 24.3 and 428.
  GemvConfig c;
  c.rows_per_warp = 4;  // each x chunk serves four W rows
  c.unroll = 2;         // 8 copies a stage per lane
  c.stages = 3;         // 16 in flight per lane; 48 KiB: 4 blocks an SM
  c.k_split = AutoSplit(n, k, c);
  // A grid just over one wave of 48 KiB blocks takes a second, mostly
  // empty wave; with two stages (32 KiB) it may fit in one. 4B's down
  // projection (640 blocks on 132 SMs): 20.5 -> 18.0 us (same sweep).
  const auto* props = at::cuda::getCurrentDeviceProperties();
  auto resident = [&](int stages) {
    const int64_t smem =
        SmemBytes(c.rows_per_warp, c.unroll, stages) +
        static_cast<int64_t>(props->reservedSharedMemPerBlock);
    return static_cast<int64_t>(props->multiProcessorCount) *
           std::min<int64_t>(props->maxThreadsPerMultiProcessor / kThreads,
                             props->sharedMemPerMultiprocessor / smem);
  };
  const int64_t blocks = Blocks(n, c.rows_per_warp, c.k_split);
  if (blocks > resident(3) && blocks <= resident(2)) c.stages = 2;
  return c;
}

bool GemvApplies(const at::Tensor& x, const at::Tensor& w,
                 const at::Tensor& bias) {
  if (!x.defined() || !w.defined() || !x.is_cuda() || !w.is_cuda() ||
      x.device() != w.device()) {
    return false;
  }
  const auto t = w.scalar_type();
  if ((t != at::kBFloat16 && t != at::kHalf) || x.scalar_type() != t) {
    return false;
  }
  if (w.dim() != 2 || !w.is_contiguous() || !Aligned16(w)) return false;
  const int64_t n = w.size(0), k = w.size(1);
  if (n < 1 || k < kChunk || k % kChunk != 0 ||
      n > std::numeric_limits<int>::max() ||
      k > std::numeric_limits<int>::max()) {
    return false;
  }
  if (x.dim() < 1 || x.size(-1) != k) return false;
  const int64_t rows = x.numel() / k;
  if (rows < 1 || rows > kGemvMaxRows) return false;
  if (bias.defined() &&
      (bias.dim() != 1 || bias.size(0) != n || bias.scalar_type() != t ||
       bias.device() != w.device())) {
    return false;
  }
  return true;
}

namespace {
// y [..., N] from x [..., K] and w [N, K] (gelu: w [2N, K]).
at::Tensor Run(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
               GemvConfig config, bool gelu) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = w.size(0), k = w.size(1), rows = x.numel() / k;
  at::Tensor xc = x.contiguous();
  if (!Aligned16(xc)) xc = xc.clone();  // a fresh allocation is aligned
  const at::Tensor b = bias.defined() ? bias.contiguous() : at::Tensor();
  const GemvConfig automatic = GemvAutoConfig(rows, n, k);
  GemvConfig c = config;
  if (c.rows_per_warp == 0) c.rows_per_warp = automatic.rows_per_warp;
  if (c.unroll == 0) c.unroll = automatic.unroll;
  if (c.stages == 0) c.stages = automatic.stages;
  if (c.k_split == 0) c.k_split = AutoSplit(n, k, c);
  TORCH_CHECK(c.k_split == 1 || c.k_split == 2 || c.k_split == 4,
              "Gemv: k_split must be 1, 2 or 4, got ", c.k_split);
  const int64_t n_out = gelu ? n / 2 : n;
  at::Tensor y = at::empty({rows, n_out}, xc.options());
  if (w.scalar_type() == at::kBFloat16) {
    gelu ? LaunchRows<__nv_bfloat16, true>(rows, xc, w, b, y, c)
         : LaunchRows<__nv_bfloat16, false>(rows, xc, w, b, y, c);
  } else {
    gelu ? LaunchRows<__half, true>(rows, xc, w, b, y, c)
         : LaunchRows<__half, false>(rows, xc, w, b, y, c);
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n_out;
  return y.view(shape);
}
}  // namespace

at::Tensor Gemv(const at::Tensor& x, const at::Tensor& w,
                const at::Tensor& bias, GemvConfig config) {
  TORCH_CHECK(GemvApplies(x, w, bias), "Gemv does not serve x ", x.sizes(), " ",
              x.scalar_type(), ", w ", w.sizes(), " ", w.scalar_type(),
              " (see GemvApplies in model/gemv.h)");
  return Run(x, w, bias, config, /*gelu=*/false);
}

at::Tensor GemvGeluMul(const at::Tensor& x, const at::Tensor& w,
                       GemvConfig config) {
  TORCH_CHECK(GemvApplies(x, w, {}) && w.size(0) % 2 == 0,
              "GemvGeluMul does not serve x ", x.sizes(), " ", x.scalar_type(),
              ", w ", w.sizes(), " ", w.scalar_type(),
              " (see GemvApplies in model/gemv.h; w needs an even row count)");
  TORCH_CHECK(config.rows_per_warp == 0 || config.rows_per_warp % 2 == 0,
              "GemvGeluMul: rows_per_warp must be even, got ",
              config.rows_per_warp);
  return Run(x, w, {}, config, /*gelu=*/true);
}

}  // namespace gemma::fused_cuda
