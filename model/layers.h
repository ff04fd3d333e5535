// Gemma 3 building blocks in LibTorch: RMSNorm (1 + w), rotary embeddings,
// grouped-query attention with the fused per-KV-group QKV projection, the
// gated GELU-tanh MLP with a fused gate/up projection, and the attention mask
// (causal, sliding window, per-image bidirectional blocks, padding, packing).
//
// Shapes: B batch, L new tokens, T cached + new tokens, H hidden, hd head_dim.
// Every module is sized by its LOCAL share of a tensor-parallel layout: an
// attention module knows its local query and KV head counts, an MLP its local
// intermediate size; with one rank local == global. The fused layouts (see
// /work/briefs/MODEL_NAMES.md) make each rank's shard one contiguous slice, so
// tensor parallelism only changes how the modules are sized and sliced (the
// collectives after `o` and `down` are added by the parallel layer wrappers).
//
// Numerics follow transformers 5.17 (modeling_gemma3.py, eager attention):
// norms in fp32 then cast back; rotary cos/sin computed in fp32 then cast to
// the activation dtype; attention softmax in fp32; masked scores get the
// dtype's lowest finite value (added, as HF's eager mask does).
#ifndef GEMMA_MODEL_LAYERS_H_
#define GEMMA_MODEL_LAYERS_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/projection_split.h"

namespace gemma {

class LayerKvCache;  // model/kv_cache.h

// ---- RMSNorm
// -----------------------------------------------------------------
struct RMSNormOptions {
  explicit RMSNormOptions(int64_t dim) : dim_(dim) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(double, eps) = 1e-6;
};

// y = x / sqrt(mean(x^2) + eps) * (1 + w), computed in fp32, cast back to x's
// dtype. `weight` ([dim], initialised to 0) is the stored "w".
class RMSNormImpl : public torch::nn::Module {
 public:
  explicit RMSNormImpl(const RMSNormOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

  RMSNormOptions options;
  torch::Tensor weight;
};
TORCH_MODULE(RMSNorm);

// The norm itself: x * rsqrt(mean(x^2) + eps) * (1 + w) in fp32, cast back to
// x's dtype. `fused` computes it with at::rms_norm (one kernel forward and one
// backward on CUDA; RMSNorm uses it there), otherwise with elementwise ops as
// transformers writes it; both are the same fp32 math.
torch::Tensor GemmaRmsNorm(const torch::Tensor& x, const torch::Tensor& weight,
                           double eps, bool fused);

// ---- Rotary embeddings
// ------------------------------------------------------- Inverse frequencies
// [hd/2] (fp32) for one layer type: 1 / theta^(2i/hd), then divided by the
// linear scaling factor.
torch::Tensor RopeInverseFrequencies(int64_t head_dim,
                                     const RopeParams& params);

// cos and sin [B', L, hd] for `position_ids` [B', L] (B' is B or 1), computed
// in fp32 and cast to `dtype`.
std::pair<torch::Tensor, torch::Tensor> RopeCosSin(
    const torch::Tensor& inv_freq, const torch::Tensor& position_ids,
    c10::ScalarType dtype);

// x * cos + rotate_half(x) * sin for x [B, heads, L, hd] and cos/sin [B', L,
// hd].
torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin);

// ---- Attention mask
// ---------------------------------------------------------- Describes the
// additive mask of one attention call. Token indices are absolute positions in
// the sequence (0 = first token ever fed), independent of the rotary position
// ids.
struct MaskSpec {
  int64_t batch = 1;
  int64_t q_len = 0;
  int64_t q_offset =
      0;  // absolute index of the first query (tokens already cached)
  int64_t kv_offset = 0;  // absolute index of the first key
  int64_t kv_len = 0;
  int64_t sliding_window =
      0;  // > 0: key j visible from query i iff j > i - window
  c10::Device device = c10::kCPU;  // where the mask is built
  // [B, >= kv_offset + kv_len], nonzero = real token; undefined = no padding.
  torch::Tensor padding;
  // [B, N] image block id per absolute index (-1 = text; missing indices are
  // text). Tokens of one block see each other in both directions.
  torch::Tensor block_ids;
  // [B, L] packed-sequence segment per query (= per key: only without cache).
  torch::Tensor segment_ids;
};

// Returns the additive mask [B, 1, q_len, kv_len] in `dtype`: 0 where allowed,
// the dtype's lowest value elsewhere. Rules (HF 5.17
// create_masks_for_vision_model and create_causal_mask):
//   full layers:    ((causal AND segment) OR block) AND padding
//   sliding layers: ((causal OR block) AND window AND segment) AND padding
torch::Tensor BuildAttentionBias(const MaskSpec& spec, c10::ScalarType dtype);

// The additive mask [B, 1, 1, C] of one new token per row at absolute index
// `index` ([1] int64) over the C slots of a static KV cache (model/kv_cache.h;
// slot j holds token j): key j is visible iff j <= index, padding[b, j] != 0
// ([B, C], the new token's slot included) and, when window > 0,
// j > index - window. Built on the tensors' device with no host sync (a CUDA
// graph can capture it). Equals BuildAttentionBias for q_len 1 at q_offset
// index over kv_offset 0, kv_len C, without image blocks or segments (a new
// token is text: image blocks only matter within the prompt).
torch::Tensor StaticStepBias(const torch::Tensor& index,
                             const torch::Tensor& padding, int64_t window,
                             c10::ScalarType dtype);

// StaticStepBias's mask described rather than built: what a decode step over
// a static KV cache hands its attention layers, so that the fused
// decode-attention kernel (model/fused_ops.h) can compute the mask itself.
struct StaticStepMask {
  torch::Tensor index;    // [1] int64: the new token's slot (the cache's)
  torch::Tensor padding;  // [B, C] int64: nonzero for the slots of real tokens
  int64_t window = 0;     // > 0: keys j > index - window only
};

// Image block ids [B, L] from token_type_ids [B, L] (1 = image token): each
// maximal run of image tokens is one block, numbered from 0 per row; text -1.
torch::Tensor BlockIdsFromTokenTypes(const torch::Tensor& token_type_ids);

// Packed-sequence segments [B, L] from position ids [B', L] (a new segment
// starts where the position does not increase by one), or an undefined tensor
// when every row is a single sequence (HF find_packed_sequence_indices).
torch::Tensor SegmentIdsFromPositions(const torch::Tensor& position_ids,
                                      int64_t batch);

// ---- Causal plan
// ------------------------------------------------------------ How a
// training forward (no KV cache, no padding, no packed segments) runs
// attention on CUDA without a [B, 1, L, L] bias: causal attention for every
// query row (flash attention; within `window` keys when 0 < window < L), then
// the rows of image blocks recomputed against the bias. Only those rows can
// see a later key (their block), so the rest is exactly the bias's mask.
struct CausalPlan {
  int64_t window = 0;  // > 0: key j visible from query i iff i - window < j
  // [start, end) query ranges that need the bias: the image-block positions
  // of any row of the batch, merged. Every key such a row sees is < end.
  std::vector<std::pair<int64_t, int64_t>> dense_rows;
};

// The plan for ((causal OR block) AND window) masks over L tokens from
// block_ids [B, L] (or undefined: no blocks). One host sync when defined.
CausalPlan BuildCausalPlan(const torch::Tensor& block_ids, int64_t window);

// Whether attention over activations like `x` with this head_dim can follow
// a CausalPlan: CUDA, SDPA chosen, bf16 or fp16, head_dim a multiple of 8 up
// to 256 (what flash attention takes).
bool CausalPlanApplies(const torch::Tensor& x, int64_t head_dim);

// ---- Projection
// --------------------------------------------------------------
class ProjectionImpl;

// Something that changes what a Projection computes (LoRA, DoRA: see
// model/lora.h). It is registered as a submodule of the projection it is
// attached to, so its parameters appear in named_parameters() under the
// projection's name ("...attn.qkv.lora.a", ...).
class ProjectionAdapter : public torch::nn::Module {
 public:
  // The projection's output for x [..., in]: the adapter decides how the
  // frozen weight [out, in] (and bias [out] or undefined) enter it.
  virtual torch::Tensor Forward(const torch::Tensor& x,
                                const torch::Tensor& weight,
                                const torch::Tensor& bias) = 0;
};

// y = x W^T (+ b): a linear layer whose parameters are "weight" [out, in] and
// optionally "bias" [out], like torch::nn::Linear, with one adapter slot.
// Every learned matrix of the model is one (qkv, o, gate_up, down; the
// vision tower's qkv, o, fc1, fc2), so adapters and tensor-parallel wrappers
// have one place to hook in.
class ProjectionImpl : public torch::nn::Module {
 public:
  ProjectionImpl(int64_t in_features, int64_t out_features, bool bias);
  torch::Tensor forward(const torch::Tensor& x);

  // Attaches `adapter` as submodule `name` (replacing one of that name), or
  // with a null adapter removes it.
  void SetAdapter(const std::string& name,
                  std::shared_ptr<ProjectionAdapter> adapter);
  const std::shared_ptr<ProjectionAdapter>& adapter() const { return adapter_; }
  const std::string& adapter_name() const { return adapter_name_; }

  int64_t in_features;
  int64_t out_features;
  torch::Tensor weight;
  torch::Tensor bias;  // undefined without bias
  // How `weight` is a shard of a tensor-parallel whole (model/
  // projection_split.h); kNone unless the model that built the projection
  // split it. in_features / out_features are the shard's.
  ProjectionSplit tp_split;

 private:
  std::shared_ptr<ProjectionAdapter> adapter_;
  std::string adapter_name_;
};
TORCH_MODULE(Projection);

// ---- Attention kernels
// -------------------------------------------------------
// How attention scores are computed. kEager: matmul + fp32 softmax exactly as
// HF's eager attention (the parity reference). kSdpa:
// at::scaled_dot_product_attention (flash for plain causal or unmasked
// attention, memory-efficient with a bias). kAuto (default): kSdpa on CUDA,
// kEager elsewhere. Under kSdpa a query whose keys are all masked (a left
// pad) outputs 0 instead of eager's mean of the values: only padding rows
// differ. The environment variable GEMMA_ATTENTION=eager|sdpa|auto
// sets the initial choice.
enum class AttentionKernel { kAuto, kEager, kSdpa };
void SetAttentionKernel(AttentionKernel kernel);
AttentionKernel GetAttentionKernel();
// Whether attention on tensors like `q` uses SDPA under the current choice.
bool UseSdpa(const torch::Tensor& q);

// ---- Attention
// ---------------------------------------------------------------
struct AttentionOptions {
  AttentionOptions(int64_t hidden_size, int64_t num_heads, int64_t num_kv_heads,
                   int64_t head_dim)
      : hidden_size_(hidden_size),
        num_heads_(num_heads),
        num_kv_heads_(num_kv_heads),
        head_dim_(head_dim) {}
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, num_heads);     // local query heads
  TORCH_ARG(int64_t, num_kv_heads);  // local KV heads (groups)
  TORCH_ARG(int64_t, head_dim);
  TORCH_ARG(double, query_pre_attn_scalar) = 256.0;  // scale = this^-0.5
  TORCH_ARG(double, rms_norm_eps) = 1e-6;
};

// Gemma 3 self-attention. Parameters (our names, local shapes):
//   qkv.weight    [(nq + 2 nkv) hd, H]: per KV group g: its nq/nkv query heads,
//                 then key head g, then value head g
//   o.weight      [H, nq hd]
//   q_norm.weight [hd], k_norm.weight [hd] (RMSNorm 1 + w, over head_dim)
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);

  // x [B, L, H]; cos/sin from RopeCosSin; bias [B, 1, L, T] from
  // BuildAttentionBias, or undefined for plain causal attention over the new
  // tokens (no cache, no padding, no image blocks, no window in effect: the
  // case flash attention serves). With `cache`, the new keys
  // and values are appended to it and attention runs over cached + new keys
  // (the bias must then cover exactly those T keys). One new token over a
  // static cache (the decode step) attends without repeating the keys and
  // values per query head: a KV group's query heads act as its query rows.
  // Returns [B, L, H] (the local partial sum under tensor parallelism).
  // With `plan` (and no cache; see CausalPlanApplies) the attention follows
  // it, and `bias` is read only on the plan's dense rows.
  // With `step` (one new token over a static cache in step-index mode, the
  // decode step) the fused decode-attention kernel runs where it applies
  // (FusedDecodeAttentionApplies): it writes the cache and masks by `step`,
  // and `bias` is not read. Elsewhere the step takes the path above, with
  // `bias`, or StaticStepBias(step) when `bias` is undefined.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin, const torch::Tensor& bias,
                        LayerKvCache* cache = nullptr,
                        const CausalPlan* plan = nullptr,
                        const StaticStepMask* step = nullptr);

  AttentionOptions options;
  Projection qkv{nullptr};
  Projection o{nullptr};
  RMSNorm q_norm{nullptr};
  RMSNorm k_norm{nullptr};

 private:
  // rope(norm(x)) per head in one fused CUDA kernel (model/fused_ops.h) for
  // x [B, L, heads(, g), hd]; contiguous, x's shape.
  static torch::Tensor NormRope(const torch::Tensor& x, RMSNorm& norm,
                                const torch::Tensor& cos,
                                const torch::Tensor& sin);
  torch::Tensor PlannedForward(const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin,
                               const torch::Tensor& bias,
                               const CausalPlan& plan);
};
TORCH_MODULE(Attention);

// ---- MLP
// ---------------------------------------------------------------------
struct GatedMlpOptions {
  GatedMlpOptions(int64_t hidden_size, int64_t intermediate_size)
      : hidden_size_(hidden_size), intermediate_size_(intermediate_size) {}
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, intermediate_size);  // local
};

// down(gelu_tanh(gate(x)) * up(x)). gate_up.weight [2 I, H] = [gate; up],
// down.weight [H, I].
class GatedMlpImpl : public torch::nn::Module {
 public:
  explicit GatedMlpImpl(const GatedMlpOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

  GatedMlpOptions options;
  Projection gate_up{nullptr};
  Projection down{nullptr};
};
TORCH_MODULE(GatedMlp);

}  // namespace gemma

#endif  // GEMMA_MODEL_LAYERS_H_
