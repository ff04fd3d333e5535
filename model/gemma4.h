// Gemma 4 text decoder with mixture of experts (HF Gemma4TextModel and
// Gemma4ForCausalLM, transformers 5.17), LibTorch.
//
// Our parameter names (under the owner's "text." prefix):
//   embed.weight [V, H]; final_norm.weight [H]
//   layers.{i}.input_norm / post_attn_norm / pre_mlp_norm / post_mlp_norm
//     .weight [H]                (HF input_layernorm, post_attention_layernorm,
//                                 pre_feedforward_layernorm,
//                                 post_feedforward_layernorm)
//   layers.{i}.attn.qkv.weight   [(nq + 2 nkv) hd, H] on layers with a V
//                                projection: per KV group g its nq/nkv query
//                                heads, key head g, value head g
//   layers.{i}.attn.qk.weight    [(nq + nkv) hd, H] on K=V layers (full
//                                layers with attention_k_eq_v): per group its
//                                query heads then key head g (no V)
//   layers.{i}.attn.o.weight [H, nq hd]; attn.q_norm / k_norm.weight [hd]
//   layers.{i}.mlp.gate_up.weight [2 I, H] = [gate; up]; mlp.down.weight
//   layers.{i}.post_dense_norm.weight [H]  (HF post_feedforward_layernorm_1,
//                                           MoE layers only)
//   layers.{i}.moe.*                       (model/moe.h; MoE layers only)
//   layers.{i}.layer_scalar [1]            a BUFFER (not trained), as in HF
// hd and nkv are the layer type's (Gemma4TextConfig::layer_head_dim/kv_heads).
//
// Layer (x in, all norms N4(x) = x * rms^-1 * w, fp32 inside):
//   h  = x + post_attn_norm(attn(input_norm(x)))
//   d  = mlp(pre_mlp_norm(h))
//   f  = MoE layers: post_dense_norm(d) + moe(h)   (moe.h: router sees h)
//        else d
//   y  = (h + post_mlp_norm(f)) * layer_scalar
// Attention: q = rope(q_norm(q)), k = rope(k_norm(k_raw)), v = N0(v_raw) with
// v_raw = k_raw on K=V layers; scores q.k (scale 1.0), fp32 softmax. Sliding
// layers use default RoPE (head_dim), full layers proportional RoPE
// (global_head_dim: the first partial_rotary_factor share of the frequency
// pairs rotate, the rest pass through).
// Embedding E[ids] * sqrt(H) (factor cast to the weight dtype); logits through
// the tied embedding, then final_logit_softcapping when set: cap*tanh(z/cap).
//
// Tensor parallelism (TpOptions, as model/gemma3.h): each module holds its
// rank's shard in model/param_table.h's layout: qkv/qk by KV groups, o and
// mlp.down by columns, mlp.gate_up by rows of each block, the embedding by
// padded vocabulary rows; norms, the layer scalar and the MoE router are
// replicated, experts split over EP. Layers with fewer KV heads than TP ranks
// (26B-A4B's full layers: 2 KV heads, TP 4) replicate each KV head on the
// tp / nkv ranks that share it, each with its own query heads (as vLLM
// does); the gradient of those key/value rows is summed over the replicas in
// backward (a hook on the weight: SumReplicas of qkv's tp_split,
// model/projection_split.h), so every rank holds the full gradient of its
// shard. Attention and the dense MLP are column- then row-parallel
// (CopyToTpRegion / ReduceFromTpRegion around them); the MoE block splits the
// tokens over the TP ranks (model/moe.h). No sequence parallelism.
#ifndef GEMMA_MODEL_GEMMA4_H_
#define GEMMA_MODEL_GEMMA4_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/comm.h"
#include "model/gemma4_config.h"
#include "model/kv_cache.h"
#include "model/gemma3.h"
#include "model/layers.h"
#include "model/loss.h"
#include "model/moe.h"
#include "model/tensor_parallel.h"

namespace gemma {

// Inverse frequencies [hd/2] (fp32) of a layer type: "default" 1/theta^(2j/hd);
// "proportional" the same for j < int(partial_rotary_factor * hd / 2) and 0
// beyond; both divided by `factor` (HF _compute_proportional_rope_parameters).
torch::Tensor Gemma4InverseFrequencies(int64_t head_dim,
                                       const Gemma4Rope& rope);

class Gemma4AttentionImpl : public torch::nn::Module {
 public:
  // axial_2d: the vision tower's 2-D RoPE (each half of the head rotated on
  // its own with its half of cos/sin) instead of rotate-half over the head.
  // num_heads / num_kv_heads: the layer's global counts; under `tp` this
  // rank holds num_heads / tp query heads and num_kv_heads / tp KV heads, or
  // one replicated KV head when tp is a multiple of num_kv_heads.
  Gemma4AttentionImpl(int64_t hidden, int64_t num_heads, int64_t num_kv_heads,
                      int64_t head_dim, bool k_eq_v, double eps,
                      bool axial_2d = false, const TpOptions& tp = {});
  // x [B, L, H]; cos/sin [B', L, hd]; bias [B, 1, L, T] or undefined.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin, const torch::Tensor& bias,
                        LayerKvCache* cache = nullptr);

  int64_t num_heads, num_kv_heads, head_dim;  // local (this TP rank)
  bool k_eq_v;
  double eps;
  bool axial_2d;
  Projection qkv{nullptr};  // registered as "qk" on K=V layers
  Projection o{nullptr};
  Gemma4Norm q_norm{nullptr};
  Gemma4Norm k_norm{nullptr};
};
TORCH_MODULE(Gemma4Attention);

class Gemma4DecoderLayerImpl : public torch::nn::Module {
 public:
  Gemma4DecoderLayerImpl(const Gemma4TextConfig& c, LayerType type,
                         std::shared_ptr<Comm> ep, const TpOptions& tp = {});
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin, const torch::Tensor& bias,
                        LayerKvCache* cache = nullptr);

  LayerType type;
  Gemma4Norm input_norm{nullptr}, post_attn_norm{nullptr};
  Gemma4Norm pre_mlp_norm{nullptr}, post_mlp_norm{nullptr};
  Gemma4Norm post_dense_norm{nullptr};  // MoE layers only
  Gemma4Attention attn{nullptr};
  GatedMlp mlp{nullptr};
  MoeBlock moe{nullptr};       // MoE layers only
  torch::Tensor layer_scalar;  // buffer [1]

 private:
  TpOptions tp_;
};
TORCH_MODULE(Gemma4DecoderLayer);

struct Gemma4DecoderInputs {
  // [B, past + L] 1 = real token, 0 = padding; undefined: no padding.
  torch::Tensor attention_mask;
  // [B or 1, L] rotary positions; undefined: past + 0..L-1.
  torch::Tensor position_ids;
  // [B, L] image block ids (BlockIdsFromTokenTypes), undefined for text.
  // With use_bidirectional_attention "vision", tokens of one block see each
  // other on SLIDING layers only (full layers stay causal), as HF 5.17 does.
  torch::Tensor block_ids;
  KvCache* cache = nullptr;  // decoding cache (NewCache()), or null
};

class Gemma4TextModelImpl : public torch::nn::Module {
 public:
  // `ep`: expert-parallel group (null: all experts local). `tp`: this
  // instance's tensor-parallel shard (see above; sequence_parallel is not
  // supported). Throws c10::Error when the config does not split tp ways.
  explicit Gemma4TextModelImpl(const Gemma4TextConfig& config,
                               std::shared_ptr<Comm> ep = nullptr,
                               TpOptions tp = {});

  torch::Tensor Embed(const torch::Tensor& input_ids);
  // Layers + final norm: [B, L, H].
  torch::Tensor Decode(const torch::Tensor& embeds,
                       const Gemma4DecoderInputs& inputs);
  // Tied head + final soft-capping: [B, L, V] (gathered over the vocabulary
  // shards under TP).
  torch::Tensor Logits(const torch::Tensor& hidden);
  // model/loss.h's CausalLmLoss of `hidden` (from Decode) over the tied head
  // with the config's final soft-capping, vocab-parallel under TP (every rank
  // returns the same values). options.softcap is set here.
  LmLoss Loss(const torch::Tensor& hidden, const torch::Tensor& labels,
              LmLossOptions options = {});
  torch::Tensor forward(const torch::Tensor& input_ids,
                        const Gemma4DecoderInputs& inputs = {});

  // A cache with the sliding window on sliding layers.
  KvCache NewCache() const;
  // Router load: [num_moe_layers, E] tokens per expert since the last reset
  // (this rank's tokens), and the reset.
  torch::Tensor TokensPerExpert() const;
  void ResetRouterStats();

  const Gemma4TextConfig& config() const { return config_; }
  int64_t ep_rank() const { return ep_rank_; }
  int64_t ep_size() const { return ep_size_; }
  const TpOptions& tp() const { return tp_; }
  const VocabShard& vocab_shard() const { return vocab_shard_; }

  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList layers{nullptr};
  Gemma4Norm final_norm{nullptr};

 private:
  Gemma4TextConfig config_;
  int64_t ep_rank_ = 0, ep_size_ = 1;
  TpOptions tp_;
  VocabShard vocab_shard_;
  std::vector<Gemma4DecoderLayer> layer_list_;
  torch::Tensor inv_freq_full_, inv_freq_sliding_;
};
TORCH_MODULE(Gemma4TextModel);

// How the gradient of Gemma 4 parameter `name` ("text.*", "vision.*",
// "projector.*") relates across a TP group (model/gemma3.h's TpGrad): the
// embedding, qkv/qk, o and the dense MLP are sharded; q/k norms and the MoE
// block's router and norms partial (heads, resp. tokens, spread over the
// ranks); LoRA adapters as LoraTpGrad (model/gemma3.h) says; the rest, and
// everything without TP, replicated. Experts are the caller's business
// (expert parallelism).
TpGrad Gemma4TpGrad(const std::string& name, const TpOptions& tp);

// Copies `weights` (our global names, e.g. "text.layers.0.moe.experts.down")
// into the model's parameters and buffers (prefix "text."), converting dtype.
// Expert tensors are global [E, ...]: each EP rank takes its slice of experts.
// InvalidArgument listing missing, unexpected and mis-shaped names; nothing
// is copied unless everything matches.
absl::Status LoadGemma4Weights(
    Gemma4TextModelImpl& model,
    const std::map<std::string, torch::Tensor>& weights);

// The same for any module (its parameter and buffer names prefixed with
// `prefix`; "" for a module whose names already carry text./vision.).
absl::Status LoadGemma4ModuleWeights(
    torch::nn::Module& module,
    const std::map<std::string, torch::Tensor>& weights,
    const std::string& prefix, int64_t ep_rank = 0, int64_t ep_size = 1);

// Every parameter and buffer of the model under our global names (experts of
// this rank only when EP > 1), CPU copies.
std::map<std::string, torch::Tensor> Gemma4StateDict(
    Gemma4TextModelImpl& model);

// Opens a model folder (HF Gemma 4 checkpoint, or safetensors in our names
// with a config.json, see model/hf_mapping_gemma4.h) and builds the text
// model (fp32). Errors name the folder and the tensor or config key.
absl::StatusOr<Gemma4TextModel> LoadGemma4TextModel(
    const std::string& dir, std::shared_ptr<Comm> ep = nullptr);

}  // namespace gemma

#endif  // GEMMA_MODEL_GEMMA4_H_
