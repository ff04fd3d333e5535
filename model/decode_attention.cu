// Split-K decode attention over a static KV cache: see
// model/decode_attention.h.
//
// Layout of the work. Grid (splits, nkv * passes, B); a block of kWarps warps
// serves one (row b, KV head, pass) over its share of the valid keys
// [lo, index]: the range is cut into `splits` equal chunks at run time (from
// the device-side index, so early steps and sliding layers read only what
// they need). A pass is up to GC of the KV head's g query heads (GC a
// template parameter chosen from g and hd so the per-lane registers stay
// bounded; g > GC takes several passes, each a block column of its own).
// Warps take U keys at a time, interleaved; within a warp the 32 lanes split
// hd (E = hd / 32 consecutive elements each, loaded in 16-byte vectors where
// they fit), so one load of a key and a value row serves all GC heads: each
// head's score is the warp sum of the lanes' partial dot products. Each warp
// keeps an fp32 online softmax (max, sum, acc[E]) per head in base 2 (q is
// pre-scaled by scale * log2 e); the block merges its warps through shared
// memory and writes (max, sum, acc) per head to an fp32 workspace, and the
// combine kernel merges the splits and divides. With one split the block
// writes the output itself. (Merging in the last block of each head group
// to finish, with an arrival counter, was 7.3% slower on 4B decode: a few
// blocks merge serially what the combine kernel spreads over one block per
// head; bench/RESULTS.md, session 10.)
//
// Folded q/k norm + rope (Params::q_weight set): q and k_new are the
// projection's raw rows; each block norms and rotates its q heads as it
// loads them (NormRopeRow: a warp sum and one shuffle per element), and the
// block whose keys include slot `index` does the same for k_new, which it
// also writes to the cache.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "model/cuda_launch.cuh"
#include "model/cuda_numeric.cuh"
#include "model/decode_attention.h"

namespace gemma::fused_cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
// The split choice: aim for kBlocksPerSm blocks per SM over the whole grid,
// but give every split at least kMinKeysPerSplit of the most keys a step can
// read, and at most kMaxSplits splits.
constexpr int64_t kBlocksPerSm = 4;
constexpr int64_t kMinKeysPerSplit = 16;
constexpr int64_t kMaxSplits = 256;
constexpr float kLog2e = 1.4426950408889634f;

// Copies E consecutive elements from p to out in the widest accesses that
// fit: both aligned to min(16, E * sizeof(T)) bytes (a register array
// declared alignas(16) is). Loads a lane's row, and stores it.
template <typename T, int E>
__device__ __forceinline__ void CopyRow(const T* p, T* out) {
  constexpr int kBytes = E * static_cast<int>(sizeof(T));
  if constexpr (kBytes % 16 == 0) {
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i)
      reinterpret_cast<uint4*>(out)[i] = reinterpret_cast<const uint4*>(p)[i];
  } else if constexpr (kBytes == 8) {
    *reinterpret_cast<uint2*>(out) = *reinterpret_cast<const uint2*>(p);
  } else if constexpr (kBytes == 4) {
    *reinterpret_cast<uint32_t*>(out) = *reinterpret_cast<const uint32_t*>(p);
  } else {
#pragma unroll
    for (int i = 0; i < E; ++i) out[i] = p[i];
  }
}

// Element strides (the last dimension is contiguous everywhere).
struct Params {
  const void* q;  // [B, nkv, g, hd]
  int64_t q_sb, q_sh, q_sg;
  const void* k_new;  // [B, nkv, 1, hd]
  int64_t kn_sb, kn_sh;
  const void* v_new;
  int64_t vn_sb, vn_sh;
  void* k_cache;  // [B, nkv, C, hd] contiguous
  void* v_cache;
  const int64_t* index;    // [1]
  const int64_t* padding;  // [B, C]
  int64_t pad_sb, pad_sj;
  int64_t capacity, window;
  int nkv, g, passes, splits;
  float scale_log2;  // scale * log2(e)
  float* part;       // [B, nkv, g, splits, hd] partial sums (splits > 1)
  float2* part_ml;   // [B, nkv, g, splits] (max, sum), base 2 (splits > 1)
  void* out;         // [B, nkv, g, hd] (splits == 1)
  // q and k_new raw (DecodeAttentionInputs::q_norm_weight set): the per-head
  // norm's weights [hd] and this step's rope rows [B or 1, hd] (cos_sb 0
  // when shared). q_weight == nullptr: q and k_new are used as they are.
  const void* q_weight;
  const void* k_weight;
  const void* cos;
  const void* sin;
  int64_t cos_sb;
  float eps, offset;
};

// One head row in a warp (lane l holds elements l E .. l E + E - 1 in x):
// RMSNorm with weight (offset + w), then the rotary embedding (rotate_half:
// the partner of element d < hd / 2 is d + hd / 2, i.e. lane l ^ 16), then
// rounded to T, as FusedNormRope computes it (up to the order of the sum of
// squares).
template <typename T, int E>
__device__ __forceinline__ void NormRopeRow(float (&x)[E], const Params& p,
                                            const T* w, const T* cos,
                                            const T* sin, int lane) {
  alignas(16) T wr[E];
  alignas(16) T cr[E];
  alignas(16) T sr[E];
  CopyRow<T, E>(w + lane * E, wr);
  CopyRow<T, E>(cos + lane * E, cr);
  CopyRow<T, E>(sin + lane * E, sr);
  float ss = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) ss += x[e] * x[e];
  const float r = rsqrtf(WarpSum(ss) / static_cast<float>(32 * E) + p.eps);
  const bool upper = lane >= 16;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const float a = x[e] * (r * (p.offset + ToFloat(wr[e])));
    const float partner = __shfl_xor_sync(0xffffffffu, a, 16);
    const float c = ToFloat(cr[e]), sn = ToFloat(sr[e]);
    const float y = upper ? a * c + partner * sn : a * c - partner * sn;
    x[e] = ToFloat(FromFloat<T>(y));
  }
}

// Keys a warp loads at once: more loads in flight, bounded registers.
template <typename T, int E>
__host__ __device__ constexpr int KeysPerWarpStep() {
  constexpr int bytes = E * static_cast<int>(sizeof(T));
  return bytes <= 8 ? 4 : bytes <= 16 ? 2 : 1;
}

template <typename T, int E, int GC>
__global__ void __launch_bounds__(kThreads)
    DecodeAttentionKernel(const Params p) {
  // Chained (model/cuda_launch.cuh): q, the step index and the caches all
  // come from earlier kernels.
  LetDependentsLaunch();
  WaitForPredecessor();
  constexpr int kHd = 32 * E;
  constexpr int U = KeysPerWarpStep<T, E>();
  const int split = blockIdx.x;
  const int kvh = blockIdx.y / p.passes, pass = blockIdx.y % p.passes;
  const int b = blockIdx.z;
  const int h0 = pass * GC;
  const int gn = min(GC, p.g - h0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  const int64_t index = *p.index;
  CUDA_KERNEL_ASSERT(index >= 0 && index < p.capacity);
  const int64_t row = static_cast<int64_t>(b) * p.nkv + kvh;
  T* kc = static_cast<T*>(p.k_cache) + row * p.capacity * kHd;
  T* vc = static_cast<T*>(p.v_cache) + row * p.capacity * kHd;
  const T* kn = static_cast<const T*>(p.k_new) + b * p.kn_sb + kvh * p.kn_sh;
  const T* vn = static_cast<const T*>(p.v_new) + b * p.vn_sb + kvh * p.vn_sh;
  const bool fold = p.q_weight != nullptr;
  const T* cos = fold ? static_cast<const T*>(p.cos) + b * p.cos_sb : nullptr;
  const T* sin = fold ? static_cast<const T*>(p.sin) + b * p.cos_sb : nullptr;

  // This block's keys: chunk `split` of the valid range [lo, index].
  const int64_t lo =
      p.window > 0 ? max(int64_t{0}, index - p.window + 1) : int64_t{0};
  const int64_t n = index - lo + 1;
  const int64_t chunk = (n + p.splits - 1) / p.splits;
  const int64_t begin = lo + split * chunk;
  const int64_t end = min(index + 1, begin + chunk);  // exclusive

  // The block whose keys include slot `index` takes this step's key and
  // value from k_new / v_new (normed and rotated here when folded; every
  // warp keeps the row) and, in pass 0, writes them to the cache: the write
  // Update would do. No other block reads that slot, so it races with none.
  alignas(16) T knew[E];
  if (begin <= index && index < end) {
    CopyRow<T, E>(kn + lane * E, knew);
    if (fold) {
      float kf[E];
#pragma unroll
      for (int e = 0; e < E; ++e) kf[e] = ToFloat(knew[e]);
      NormRopeRow<T, E>(kf, p, static_cast<const T*>(p.k_weight), cos, sin,
                        lane);
#pragma unroll
      for (int e = 0; e < E; ++e) knew[e] = FromFloat<T>(kf[e]);
    }
    if (pass == 0 && warp == 0) {
      alignas(16) T vnew[E];
      CopyRow<T, E>(vn + lane * E, vnew);
      CopyRow<T, E>(knew, kc + index * kHd + lane * E);
      CopyRow<T, E>(vnew, vc + index * kHd + lane * E);
    }
  }

  float q[GC][E];
#pragma unroll
  for (int h = 0; h < GC; ++h) {
    alignas(16) T raw[E];
    if (h < gn) {
      const T* qp = static_cast<const T*>(p.q) + b * p.q_sb + kvh * p.q_sh +
                    (h0 + h) * p.q_sg + lane * E;
      CopyRow<T, E>(qp, raw);
    }
#pragma unroll
    for (int e = 0; e < E; ++e) q[h][e] = h < gn ? ToFloat(raw[e]) : 0.f;
    // h < gn is the same for the whole warp (the shuffles need every lane).
    if (fold && h < gn) {
      NormRopeRow<T, E>(q[h], p, static_cast<const T*>(p.q_weight), cos, sin,
                        lane);
    }
#pragma unroll
    for (int e = 0; e < E; ++e) q[h][e] *= p.scale_log2;
  }

  float m[GC], l[GC], acc[GC][E];
#pragma unroll
  for (int h = 0; h < GC; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[h][e] = 0.f;
  }

  const int64_t* pad = p.padding + b * p.pad_sb;
  for (int64_t j0 = begin + warp * U; j0 < end; j0 += kWarps * U) {
    alignas(16) T kr[U][E];
    alignas(16) T vr[U][E];
    bool valid[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t j = j0 + u;
      valid[u] = j < end && pad[j * p.pad_sj] != 0;
      if (valid[u]) {
        // Slot `index` may not be written yet: this step's row instead.
        if (j == index) {
#pragma unroll
          for (int e = 0; e < E; ++e) kr[u][e] = knew[e];
        } else {
          CopyRow<T, E>(kc + j * kHd + lane * E, kr[u]);
        }
        CopyRow<T, E>((j == index ? vn : vc + j * kHd) + lane * E, vr[u]);
      }
    }
    // valid[] is the same for the whole warp: no divergence below.
#pragma unroll
    for (int h = 0; h < GC; ++h) {
      if (h >= gn) break;
      float s[U];
      float mx = m[h];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float dot = 0.f;
        if (valid[u]) {
#pragma unroll
          for (int e = 0; e < E; ++e) dot += q[h][e] * ToFloat(kr[u][e]);
        }
        dot = WarpSum(dot);
        s[u] = valid[u] ? dot : -INFINITY;
        mx = fmaxf(mx, s[u]);
      }
      if (mx == -INFINITY) continue;        // nothing visible yet
      const float corr = exp2f(m[h] - mx);  // 0 on the first visible key
      l[h] *= corr;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[h][e] *= corr;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (!valid[u]) continue;
        const float pu = exp2f(s[u] - mx);
        l[h] += pu;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[h][e] += pu * ToFloat(vr[u][e]);
      }
      m[h] = mx;
    }
  }

  // Merge the warps.
  __shared__ __align__(16) float s_acc[kWarps][GC][kHd];
  __shared__ float s_m[kWarps][GC], s_l[kWarps][GC];
#pragma unroll
  for (int h = 0; h < GC; ++h) {
    if (h >= gn) break;
#pragma unroll
    for (int e = 0; e < E; ++e) s_acc[warp][h][lane * E + e] = acc[h][e];
    if (lane == 0) {
      s_m[warp][h] = m[h];
      s_l[warp][h] = l[h];
    }
  }
  __syncthreads();
  const int64_t out_row = row * p.g + h0;  // first head's row of [B*nkv*g]
  for (int i = threadIdx.x; i < gn * kHd; i += kThreads) {
    const int h = i / kHd, d = i % kHd;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, s_m[w][h]);
    float sum = 0.f, a = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float c = exp2f(s_m[w][h] - mx);
        sum += s_l[w][h] * c;
        a += s_acc[w][h][d] * c;
      }
    }
    if (p.splits == 1) {
      static_cast<T*>(p.out)[(out_row + h) * kHd + d] =
          FromFloat<T>(sum > 0.f ? a / sum : 0.f);
    } else {
      const int64_t slot = (out_row + h) * p.splits + split;
      p.part[slot * kHd + d] = a;
      if (d == 0) p.part_ml[slot] = make_float2(mx, sum);
    }
  }
}

// out[r, d] for r over [B * nkv * g] (blockIdx.y * gridDim.x + blockIdx.x),
// d = threadIdx.x < hd: the splits' partial results merged. The splits'
// weights go to shared memory first (dynamic: 2 * splits floats), so the
// merge loop's loads of `part` are independent and pipeline.
template <typename T>
__global__ void CombineKernel(const float* part, const float2* part_ml,
                              int splits, int hd, T* out) {
  LetDependentsLaunch();
  WaitForPredecessor();
  extern __shared__ float weights[];  // [splits] exp2(m_s - m), [splits] l_s * that
  __shared__ float red[32];
  const int64_t r = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  const int d = threadIdx.x, lane = d & 31, warp = d >> 5;
  const float2* ml = part_ml + r * splits;
  float mx = -INFINITY;
  for (int s = d; s < splits; s += blockDim.x) {
    if (ml[s].y > 0.f) mx = fmaxf(mx, ml[s].x);
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  if (warp == 0) {
    mx = lane < static_cast<int>(blockDim.x >> 5) ? red[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) red[0] = mx;
  }
  __syncthreads();
  mx = red[0];
  float* scaled = weights + splits;
  for (int s = d; s < splits; s += blockDim.x) {
    const float2 v = ml[s];
    // A split that saw no visible key contributes nothing (its partials
    // may be unwritten).
    const float c = v.y > 0.f && mx != -INFINITY ? exp2f(v.x - mx) : 0.f;
    weights[s] = c;
    scaled[s] = v.y * c;
  }
  __syncthreads();
  const float* pr = part + r * splits * hd + d;
  float sum = 0.f, a = 0.f;
#pragma unroll 8
  for (int s = 0; s < splits; ++s) {
    const float c = weights[s];  // the same for the whole block: no divergence
    if (c != 0.f) {
      sum += scaled[s];
      a += pr[static_cast<int64_t>(s) * hd] * c;
    }
  }
  out[r * hd + d] = FromFloat<T>(sum > 0.f ? a / sum : 0.f);
}

// The most query heads one block serves for head dim hd: GC * E floats of q
// and of acc per lane stay within 64 registers each.
int MaxHeadsPerPass(int64_t hd) { return hd >= 512 ? 4 : 8; }

// GC for g query heads per KV head: the smallest of 2, 4, 8 that holds them
// (capped by MaxHeadsPerPass; more heads take several passes).
int HeadsPerPass(int64_t hd, int64_t g) {
  const int cap = MaxHeadsPerPass(hd);
  for (int gc : {2, 4, 8}) {
    if (gc >= g || gc >= cap) return std::min(gc, cap);
  }
  return cap;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The widest load a lane makes: its E = hd / 32 elements, at most 16 bytes.
int64_t VectorBytes(int64_t hd, int64_t element_size) {
  return std::min<int64_t>(16, hd / 32 * element_size);
}

bool Aligned(const at::Tensor& t, int64_t bytes,
             std::initializer_list<int> dims) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes != 0) return false;
  for (int d : dims) {
    if (t.size(d) > 1 && (t.stride(d) * t.element_size()) % bytes != 0)
      return false;
  }
  return true;
}

template <typename T, int E, int GC>
void Launch(const Params& p, dim3 grid) {
  LaunchChained(DecodeAttentionKernel<T, E, GC>, grid, dim3(kThreads), 0, p);
}

template <typename T, int E>
void LaunchForHeads(int gc, const Params& p, dim3 grid) {
  switch (gc) {
    case 2:
      return Launch<T, E, 2>(p, grid);
    case 4:
      return Launch<T, E, 4>(p, grid);
    default:
      if constexpr (E < 16) return Launch<T, E, 8>(p, grid);
      TORCH_CHECK(false, "DecodeAttention: ", gc, " heads per pass at hd ",
                  32 * E);
  }
}

template <typename T>
void LaunchTyped(int64_t hd, int gc, const Params& p, dim3 grid) {
  switch (hd) {
    case 64:
      return LaunchForHeads<T, 2>(gc, p, grid);
    case 128:
      return LaunchForHeads<T, 4>(gc, p, grid);
    case 256:
      return LaunchForHeads<T, 8>(gc, p, grid);
    case 512:
      return LaunchForHeads<T, 16>(gc, p, grid);
    default:
      TORCH_CHECK(false, "DecodeAttention: head_dim ", hd, " not served");
  }
}

// One step's kernels in element type T: the attention, then (with several
// splits) the combine of the splits' partial results, a block per query
// head of each row (grid.z is the batch).
template <typename T>
void LaunchStep(int64_t hd, int gc, const Params& p, dim3 grid) {
  LaunchTyped<T>(hd, gc, p, grid);
  if (p.splits <= 1) return;
  const dim3 combine_grid(static_cast<unsigned>(p.nkv * p.g), grid.z);
  const size_t smem = 2 * static_cast<size_t>(p.splits) * sizeof(float);
  LaunchChained(CombineKernel<T>, combine_grid, dim3(static_cast<unsigned>(hd)),
                smem, p.part, p.part_ml, p.splits, static_cast<int>(hd),
                static_cast<T*>(p.out));
}

}  // namespace

bool DecodeAttentionHeadDim(int64_t hd) {
  return hd == 64 || hd == 128 || hd == 256 || hd == 512;
}

std::string DecodeAttentionRejects(const DecodeAttentionInputs& in) {
  const at::Tensor& q = in.q;
  if (!q.defined() || !q.is_cuda() || q.dim() != 4 || q.stride(3) != 1)
    return "q must be a CUDA [B, nkv, g, hd] with hd contiguous";
  const int64_t b = q.size(0), nkv = q.size(1), hd = q.size(3);
  if (!DecodeAttentionHeadDim(hd))
    return c10::str("head_dim ", hd, " not served (64, 128, 256, 512)");
  const auto dtype = q.scalar_type();
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf)
    return c10::str("q must be float, bf16 or fp16, got ", dtype);
  const at::Tensor& kc = in.k_cache;
  if (!kc.defined() || kc.dim() != 4 || kc.size(0) != b || kc.size(1) != nkv ||
      kc.size(3) != hd || !kc.is_contiguous() || !in.v_cache.defined() ||
      in.v_cache.sizes() != kc.sizes() || !in.v_cache.is_contiguous()) {
    return c10::str("the caches must be contiguous [", b, ", ", nkv, ", C, ",
                    hd, "]");
  }
  const int64_t c = kc.size(2);
  for (const at::Tensor* t : {&in.k_new, &in.v_new}) {
    if (!t->defined() || t->dim() != 4 || t->size(0) != b ||
        t->size(1) != nkv || t->size(2) != 1 || t->size(3) != hd ||
        t->stride(3) != 1) {
      return c10::str("k_new, v_new must be [", b, ", ", nkv, ", 1, ", hd,
                      "] with hd contiguous");
    }
  }
  for (const at::Tensor* t : {&in.k_new, &in.v_new, &kc, &in.v_cache}) {
    if (t->scalar_type() != dtype || t->device() != q.device())
      return "q, k_new, v_new and the caches must share one dtype and device";
  }
  const int64_t vec = VectorBytes(hd, q.element_size());
  if (!Aligned(kc, vec, {}) || !Aligned(in.v_cache, vec, {}))
    return c10::str("the caches must be ", vec, "-byte aligned");
  if (!in.index.defined() || in.index.numel() != 1 ||
      in.index.scalar_type() != at::kLong || in.index.device() != q.device())
    return "index must be a [1] int64 on q's device";
  const at::Tensor& pad = in.padding;
  if (!pad.defined() || pad.dim() != 2 || pad.size(0) != b ||
      pad.size(1) != c || pad.scalar_type() != at::kLong ||
      pad.device() != q.device()) {
    return c10::str("padding must be a [", b, ", ", c, "] int64 on q's device");
  }
  if (in.window < 0) return "window must be >= 0";
  if (in.q_norm_weight.defined()) {
    for (const at::Tensor* w : {&in.q_norm_weight, &in.k_norm_weight}) {
      if (!w->defined() || w->dim() != 1 || w->size(0) != hd ||
          !w->is_contiguous() || w->scalar_type() != dtype ||
          w->device() != q.device() || !Aligned(*w, vec, {})) {
        return c10::str("the q/k norm weights must be contiguous [", hd,
                        "] in q's dtype and device");
      }
    }
    for (const at::Tensor* t : {&in.cos, &in.sin}) {
      if (!t->defined() || t->dim() != 3 ||
          (t->size(0) != 1 && t->size(0) != b) || t->size(1) != 1 ||
          t->size(2) != hd || t->stride(2) != 1 || t->scalar_type() != dtype ||
          t->device() != q.device() || !Aligned(*t, vec, {0})) {
        return c10::str("cos and sin must be [1 or ", b, ", 1, ", hd,
                        "] in q's dtype and device, hd contiguous");
      }
    }
    if (in.cos.sizes() != in.sin.sizes() ||
        in.cos.stride(0) != in.sin.stride(0)) {
      return "cos and sin must have one shape and layout";
    }
  }
  if (nkv * CeilDiv(q.size(2), HeadsPerPass(hd, q.size(2))) >= 65536 ||
      b >= 65536) {
    return c10::str("grid too large (B ", b, ", nkv ", nkv, ")");
  }
  return "";
}

int64_t DecodeAttentionSplits(int64_t b, int64_t nkv, int64_t g, int64_t hd,
                              int64_t c, int64_t window, int64_t sms) {
  const int64_t span = window > 0 ? std::min(c, window) : c;
  const int64_t passes = CeilDiv(g, HeadsPerPass(hd, g));
  int64_t splits =
      CeilDiv(kBlocksPerSm * sms, std::max<int64_t>(1, b * nkv * passes));
  splits = std::min(splits, CeilDiv(span, kMinKeysPerSplit));
  return std::clamp<int64_t>(splits, 1, kMaxSplits);
}

at::Tensor DecodeAttention(const DecodeAttentionInputs& in) {
  const std::string rejected = DecodeAttentionRejects(in);
  TORCH_CHECK(rejected.empty(), "DecodeAttention: ", rejected);
  c10::cuda::CUDAGuard guard(in.q.device());
  const int64_t b = in.q.size(0), nkv = in.q.size(1), g = in.q.size(2),
                hd = in.q.size(3), c = in.k_cache.size(2);
  // The vector loads want each lane's E elements aligned; a stray view is
  // copied (a fresh tensor is aligned), the caches must be.
  const int64_t vec = VectorBytes(hd, in.q.element_size());
  const at::Tensor q = Aligned(in.q, vec, {0, 1, 2})
                           ? in.q
                           : in.q.clone(at::MemoryFormat::Contiguous);
  const at::Tensor kn = Aligned(in.k_new, vec, {0, 1})
                            ? in.k_new
                            : in.k_new.clone(at::MemoryFormat::Contiguous);
  const at::Tensor vn = Aligned(in.v_new, vec, {0, 1})
                            ? in.v_new
                            : in.v_new.clone(at::MemoryFormat::Contiguous);

  const int gc = HeadsPerPass(hd, g);
  const int64_t passes = CeilDiv(g, gc);
  const int64_t sms =
      at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t splits =
      DecodeAttentionSplits(b, nkv, g, hd, c, in.window, sms);

  at::Tensor out = at::empty({b, nkv, g, hd}, q.options());
  at::Tensor part, part_ml;
  const auto f32 = q.options().dtype(at::kFloat);
  if (splits > 1) {
    part = at::empty({b * nkv * g * splits * hd}, f32);
    part_ml = at::empty({b * nkv * g * splits * 2}, f32);
  }
  Params p;
  p.q = q.data_ptr();
  p.q_sb = q.stride(0), p.q_sh = q.stride(1), p.q_sg = q.stride(2);
  p.k_new = kn.data_ptr();
  p.kn_sb = kn.stride(0), p.kn_sh = kn.stride(1);
  p.v_new = vn.data_ptr();
  p.vn_sb = vn.stride(0), p.vn_sh = vn.stride(1);
  p.k_cache = in.k_cache.data_ptr();
  p.v_cache = in.v_cache.data_ptr();
  p.index = in.index.data_ptr<int64_t>();
  p.padding = in.padding.data_ptr<int64_t>();
  p.pad_sb = in.padding.stride(0), p.pad_sj = in.padding.stride(1);
  p.capacity = c;
  p.window = in.window;
  p.nkv = static_cast<int>(nkv);
  p.g = static_cast<int>(g);
  p.passes = static_cast<int>(passes);
  p.splits = static_cast<int>(splits);
  p.scale_log2 = static_cast<float>(in.scale) * kLog2e;
  p.part = splits > 1 ? part.data_ptr<float>() : nullptr;
  p.part_ml = splits > 1 ? reinterpret_cast<float2*>(part_ml.data_ptr<float>())
                         : nullptr;
  p.out = out.data_ptr();
  const bool fold = in.q_norm_weight.defined();
  p.q_weight = fold ? in.q_norm_weight.data_ptr() : nullptr;
  p.k_weight = fold ? in.k_norm_weight.data_ptr() : nullptr;
  p.cos = fold ? in.cos.data_ptr() : nullptr;
  p.sin = fold ? in.sin.data_ptr() : nullptr;
  p.cos_sb = fold && in.cos.size(0) > 1 ? in.cos.stride(0) : 0;
  p.eps = static_cast<float>(in.norm_eps);
  p.offset = static_cast<float>(in.norm_offset);

  const dim3 grid(static_cast<unsigned>(splits),
                  static_cast<unsigned>(nkv * passes),
                  static_cast<unsigned>(b));
  switch (q.scalar_type()) {
    case at::kBFloat16:
      LaunchStep<__nv_bfloat16>(hd, gc, p, grid);
      break;
    case at::kHalf:
      LaunchStep<__half>(hd, gc, p, grid);
      break;
    default:
      LaunchStep<float>(hd, gc, p, grid);
      break;
  }
  return out;
}

}  // namespace gemma::fused_cuda
