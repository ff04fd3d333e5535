// Gemma 3 text decoder (HF Gemma3TextModel + tied LM head), LibTorch.
//
// Parameter names (registered exactly so, under the owner's "text." prefix):
//   embed.weight [V, H]; layers.{i}.input_norm / post_attn_norm / pre_mlp_norm
//   / post_mlp_norm .weight [H]; layers.{i}.attn.{qkv,o,q_norm,k_norm}.weight;
//   layers.{i}.mlp.{gate_up,down}.weight; final_norm.weight [H].
//
// Layer: h = x + post_attn_norm(attn(input_norm(x)));
//        y = h + post_mlp_norm(mlp(pre_mlp_norm(h))).
// Embedding: E[ids] * sqrt(H), the factor rounded to the weight dtype first.
//
// Tensor parallelism (TpOptions, model/tensor_parallel.h): every module holds
// its rank's shard in the checkpoint layout of model/param_table.h (qkv by
// whole KV groups, gate/up by rows of each block, o/down by columns, the
// embedding by padded vocabulary rows); norms are replicated. A layer is
//   h = x + post_attn_norm(Exit(attn(Enter(input_norm(x)))))
// with Enter/Exit = CopyToTpRegion/ReduceFromTpRegion, or under sequence
// parallelism GatherFromSequenceRegion/ReduceScatterToSequenceRegion with x
// split along the sequence. Logits are gathered over the vocabulary shards;
// Loss() is the vocab-parallel fused cross-entropy, which never gathers them.
#ifndef GEMMA_MODEL_GEMMA3_H_
#define GEMMA_MODEL_GEMMA3_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/layers.h"
#include "model/loss.h"
#include "model/tensor_parallel.h"

namespace gemma {

class KvCache;

// Inference: a layer's last residual add joined with the norm after it (the
// next layer's input norm, or the final norm) in one kernel. `in`: this
// layer's input norm as the layer before computed it (undefined: compute
// it); `next_weight`: the norm after the layer; `out`: that norm of the
// layer's output (joined with the residual add by the fused kernel on CUDA,
// a separate norm elsewhere), undefined with autograd on.
struct NormChain {
  torch::Tensor in;
  torch::Tensor next_weight;
  torch::Tensor out;
};

// One decoder layer.
class Gemma3DecoderLayerImpl : public torch::nn::Module {
 public:
  Gemma3DecoderLayerImpl(const TextConfig& config, LayerType type,
                         TpOptions tp = {});

  // x [B, L, H] ([B, L / tp, H] under sequence parallelism without a cache);
  // cos/sin and bias for this layer type over the whole sequence.
  // `plan` (training forwards on CUDA) and `step` (decode steps over a
  // static cache): see AttentionImpl::forward.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin, const torch::Tensor& bias,
                        LayerKvCache* cache = nullptr,
                        const CausalPlan* plan = nullptr,
                        const StaticStepMask* step = nullptr,
                        NormChain* chain = nullptr);

  LayerType type;
  RMSNorm input_norm{nullptr};
  Attention attn{nullptr};
  RMSNorm post_attn_norm{nullptr};
  RMSNorm pre_mlp_norm{nullptr};
  GatedMlp mlp{nullptr};
  RMSNorm post_mlp_norm{nullptr};

 private:
  torch::Tensor Enter(const torch::Tensor& x, bool sp);
  torch::Tensor Exit(const torch::Tensor& x, bool sp);
  TpOptions tp_;
};
TORCH_MODULE(Gemma3DecoderLayer);

// What a decoder forward needs besides the input embeddings.
struct DecoderInputs {
  // [B, past + L]: 1 for real tokens, 0 for padding, covering every token fed
  // so far (cached ones too). Undefined: no padding.
  torch::Tensor attention_mask;
  // [B or 1, L] rotary positions of the new tokens. Undefined: past + 0..L-1.
  torch::Tensor position_ids;
  // [B, L] image block ids of the new tokens (BlockIdsFromTokenTypes);
  // undefined for text-only input. Bidirectional attention inside each block.
  torch::Tensor block_ids;
  // Decoding cache (updated in place), or null for a full (training) forward.
  KvCache* cache = nullptr;
};

// What one decode step over a static KV cache needs (model/static_decoder.h):
// device tensors of fixed shape, so the step can be captured as a CUDA graph.
struct StaticStepInputs {
  // Rotary cos/sin [B, 1, hd] of the new tokens per layer type (index 0:
  // sliding, 1: full; undefined for a type the model does not have).
  torch::Tensor cos[2];
  torch::Tensor sin[2];
  // [B, capacity]: nonzero for the slots of real tokens, the new one's too.
  torch::Tensor padding;
  // Static, in step-index mode (KvCache::SetStepIndex) at the new token's
  // slot; updated in place.
  KvCache* cache = nullptr;
};

class Gemma3TextModelImpl : public torch::nn::Module {
 public:
  // apply_final_softcap: whether final_logit_softcapping (if set) is applied to
  // the logits: true for HF Gemma3ForCausalLM, false inside the VL model.
  // tp: this instance's shard of a tensor-parallel layout (the group must
  // outlive the module's forwards and backwards). Throws c10::Error when the
  // config cannot be split tp ways (heads, KV heads, intermediate size).
  explicit Gemma3TextModelImpl(const TextConfig& config,
                               bool apply_final_softcap = true,
                               TpOptions tp = {});

  // E[ids] * sqrt(H) (factor cast to the weight dtype). ids [B, L] int64.
  // Replicated over the TP group (the vocab shards' lookups are summed).
  torch::Tensor Embed(const torch::Tensor& input_ids);
  // Runs the layers and the final norm over `embeds` [B, L, H]: [B, L, H],
  // replicated over the TP group.
  torch::Tensor Decode(const torch::Tensor& embeds,
                       const DecoderInputs& inputs);
  // One new token per row over a static cache (StaticStepInputs): embeds
  // [B, 1, H] -> hidden [B, 1, H] after the final norm, with the same layers
  // as Decode. Issues no host sync and allocates only what the step returns
  // or drops (a CUDA graph can capture it). Throws c10::Error unless the
  // cache is static with a step index.
  torch::Tensor DecodeStep(const torch::Tensor& embeds,
                           const StaticStepInputs& inputs);
  // Rotary cos/sin [B', L, hd] of the layers of `type` at position_ids
  // [B', L] (int64, on the weights' device), in `dtype`: what Decode applies.
  std::pair<torch::Tensor, torch::Tensor> Rope(
      LayerType type, const torch::Tensor& position_ids,
      c10::ScalarType dtype) const;
  // Tied LM head (+ final soft-capping when enabled): [B, L, V].
  torch::Tensor Logits(const torch::Tensor& hidden);
  // model/loss.h's CausalLmLoss of `hidden` (from Decode) against `labels`
  // over the tied head, vocab-parallel under TP (every rank returns the same
  // values). options.softcap is the caller's (the VL model applies none).
  LmLoss Loss(const torch::Tensor& hidden, const torch::Tensor& labels,
              const LmLossOptions& options = {});
  // This rank's rows of the padded vocabulary (all of it without TP).
  const VocabShard& vocab_shard() const { return vocab_shard_; }
  const TpOptions& tp() const { return tp_; }
  // Embed + Decode + Logits.
  torch::Tensor forward(const torch::Tensor& input_ids,
                        const DecoderInputs& inputs);

  const TextConfig& config() const { return config_; }

  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm final_norm{nullptr};

 private:
  TextConfig config_;
  bool apply_final_softcap_;
  TpOptions tp_;
  VocabShard vocab_shard_;
  std::vector<Gemma3DecoderLayer> layer_list_;
  torch::Tensor inv_freq_full_;
  torch::Tensor inv_freq_sliding_;
};
TORCH_MODULE(Gemma3TextModel);

// How the gradient of parameter `name` (the VL model's names, "text.*",
// "vision.*", "projector.*") relates across the ranks of a TP group:
//   kSharded     each rank holds its own slice (and its whole gradient);
//   kReplicated  every rank holds the same tensor and the same gradient;
//   kPartial     every rank holds the same tensor but only part of its
//                gradient: the sum over the group is the gradient (q/k norms,
//                shared by heads spread over the ranks; the decoder's norms
//                under sequence parallelism).
enum class TpGrad { kSharded, kReplicated, kPartial };
// LoRA / DoRA adapters (model/lora.h, "<projection>.lora.a" / ".lora.b" /
// ".lora.m") included: on a column-parallel projection (qkv, gate_up) A is
// kPartial, B and m kSharded; on a row-parallel one (o, down) A is kSharded,
// B and m kPartial.
TpGrad Gemma3TpGrad(const std::string& name, const TpOptions& tp);

// The TpGrad of a LoRA parameter `name` of a text projection of either family
// (Gemma 4's K=V "attn.qk" too): as Gemma3TpGrad says; kReplicated for
// anything else (vision adapters) and without TP.
TpGrad LoraTpGrad(const std::string& name, const TpOptions& tp);

}  // namespace gemma

#endif  // GEMMA_MODEL_GEMMA3_H_
