// LoRA and DoRA adapters on our fused projections, adapter checkpoints,
// merging, and export to a Hugging Face PEFT adapter folder.
//
// One adapter per Projection (model/layers.h), attached in its "lora" slot, so
// its parameters are named "<projection>.lora.a" [r, in], "<projection>.lora.b"
// [out, r] and, for DoRA, "<projection>.lora.m" [out]:
//
//   LoRA: y = W x + b + s * B A drop(x)                      (s = alpha / r)
//   DoRA: y = W x + b + (m / n - 1) * W drop(x) + (m / n) * s * B A drop(x)
//         with n = ||W + s B A||_row computed with B A detached and n itself
//         detached (peft 0.21 DoraLinearLayer); without dropout (or in eval
//         mode) drop(x) = x and this is m / n * (W + s B A) x + b.
//
// Initialisation follows peft: A Kaiming-uniform (a = sqrt(5)) from torch's
// default generator, B zero, m = ||W||_row. Dropout applies in train mode only.
//
// On the fused text qkv (per-KV-group rows) and gate_up ([gate; up]) the one A
// is shared by q/k/v (gate/up). This is exactly peft's separate q/k/v adapters
// with equal lora_A: exporting gives each part lora_A = A and lora_B (and the
// DoRA magnitude) = that part's rows of B (m), gathered per KV group. Gemma 4's
// K=V layers fuse only q/k ("attn.qk"): there A is shared by q and k.
//
// Models: every function takes the model as its module tree (a
// torch::nn::Module, the root whose named_modules() hold "text.*" and
// "vision.*") plus its AdapterLayout (model/lora_layout.h: which projections
// are targets, their target names, their HF modules). Overloads for
// Gemma3Model (model/vl_model.h) and Gemma4Model (model/gemma4_model.h; text-
// only or VL) build the layout themselves; for a model held as a plain
// torch::nn::Module, AdapterLayoutOf(module) finds it:
//
//   GEMMA_ASSIGN_OR_RETURN(AdapterLayout layout, AdapterLayoutOf(*module));
//   GEMMA_RETURN_IF_ERROR(AttachAdapters(*module, layout, spec));
//
// Target names (PeftSpec.target_modules) depend on the family, see
// model/lora_layout.h: Gemma 3 "qkv", "o", "gate_up", "down", "vision.qkv",
// "vision.o", "vision.fc1", "vision.fc2"; Gemma 4 "qkv" (incl. the qk of K=V
// layers), "o", "gate_up", "down" (dense MLP only: the MoE experts and router
// are never adapted), "vision.qkv", "vision.o", "vision.gate_up",
// "vision.down". Empty means the four text ones. Since Gemma 4 adapters never
// touch the experts, an expert-parallel Gemma4Model holds the same adapters on
// every rank (replicated, like the dense weights they sit on).
//
// Tensor parallelism: on a model whose text projections are TP shards
// (their ProjectionImpl::tp_split, set by Gemma3TextModel / Gemma4TextModel)
// each adapter is split like its projection (model/lora_adapter.h: column-
// parallel qkv / gate_up hold A whole and their rows of B and of DoRA's m,
// row-parallel o / down their columns of A, B and m whole, the DoRA weight
// norms summed over the group; Gemma3TpGrad / LoraTpGrad say how the
// gradients relate). A TP = N model attached with the same torch seed starts
// from the TP = 1 adapter's shards. Checkpoints and exports always hold the
// whole (TP = 1) tensors: saving and exporting gather the shards (collective:
// every rank of the TP group calls them, TP rank 0 writes, the others return
// OK without writing), loading takes this rank's shard, merging folds each
// shard into its weight shard. With DoRA, attaching, loading a checkpoint
// (which attaches) and merging are collective over the TP group too.
#ifndef GEMMA_MODEL_LORA_H_
#define GEMMA_MODEL_LORA_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gemma/v1/job_spec.pb.h"
#include "model/gemma4_model.h"
#include "model/layers.h"
#include "model/lora_adapter.h"
#include "model/lora_layout.h"
#include "model/vl_model.h"

namespace gemma {

// A PeftSpec with its defaults filled in and checked.
struct PeftSettings {
  std::string method = "lora";  // "lora" or "dora"
  int64_t rank = 8;
  double alpha = 8;  // scaling = alpha / rank
  double dropout = 0;
  std::vector<std::string> targets;  // our target names, sorted, unique
  double scaling() const { return alpha / static_cast<double>(rank); }
};

// Fills defaults (rank 0 -> 8, alpha 0 -> rank, empty targets -> the text
// four, method "" -> "lora") and checks the spec: INVALID_ARGUMENT naming the
// field ("peft.target_modules[1]: unknown target 'qkvx' (known: ...)",
// "peft.rank: must be > 0", "peft.dropout: must be in [0, 1)", "peft.method").
// Target names are checked against `layout`'s family; without a layout,
// against Gemma 3's.
absl::StatusOr<PeftSettings> ResolvePeftSpec(const gemma::v1::PeftSpec& spec,
                                             const AdapterLayout& layout);
absl::StatusOr<PeftSettings> ResolvePeftSpec(const gemma::v1::PeftSpec& spec);

// Attaches a fresh adapter (per `spec`) to every targeted projection of
// `model` (replacing any attached before) and freezes everything else:
// requires_grad is false for every parameter except the adapters'.
// INVALID_ARGUMENT for a bad spec (see ResolvePeftSpec) or vision targets on a
// text-only model.
absl::Status AttachAdapters(torch::nn::Module& model,
                            const AdapterLayout& layout,
                            const gemma::v1::PeftSpec& spec);
absl::Status AttachAdapters(Gemma3Model& model,
                            const gemma::v1::PeftSpec& spec);
absl::Status AttachAdapters(Gemma4Model& model,
                            const gemma::v1::PeftSpec& spec);

// Every adapter parameter as (full name, tensor), in named_parameters() order,
// e.g. ("text.layers.0.attn.qkv.lora.a", [r, H]).
std::vector<std::pair<std::string, torch::Tensor>> AdapterParameters(
    torch::nn::Module& model);
std::vector<std::pair<std::string, torch::Tensor>> AdapterParameters(
    Gemma3Model& model);
std::vector<std::pair<std::string, torch::Tensor>> AdapterParameters(
    Gemma4Model& model);

// Adapter checkpoint folder:
//   DIR/adapter.json           {"format": "gemma-adapter", "version": 1,
//                               "peft": {method, rank, alpha, dropout,
//                               target_modules}, "base_model": path,
//                               "step": n, "projections": {name:
//                               {base_shape}}}
//   DIR/adapter.safetensors    the adapter parameters (fp32, our names)
// Written into DIR.tmp.<pid> and renamed to DIR (an existing DIR is replaced).
// base_shape and the tensors are whole (TP = 1) ones on a TP model too:
// collective over its TP group, TP rank 0 writes (see the top).
absl::Status SaveAdapterCheckpoint(const std::string& dir,
                                   torch::nn::Module& model,
                                   const AdapterLayout& layout,
                                   const gemma::v1::PeftSpec& spec,
                                   const std::string& base_model,
                                   int64_t step = 0);
absl::Status SaveAdapterCheckpoint(const std::string& dir, Gemma3Model& model,
                                   const gemma::v1::PeftSpec& spec,
                                   const std::string& base_model,
                                   int64_t step = 0);
absl::Status SaveAdapterCheckpoint(const std::string& dir, Gemma4Model& model,
                                   const gemma::v1::PeftSpec& spec,
                                   const std::string& base_model,
                                   int64_t step = 0);

// Whether this rank writes the files of SaveAdapterCheckpoint and
// ExportPeftAdapter: TP rank 0 of the text projections' group, or every rank
// of a model that is not split.
bool WritesAdapterFiles(torch::nn::Module& model, const AdapterLayout& layout);

// The whole (TP = 1) adapters' bytes in an adapter checkpoint (fp32): what
// SaveAdapterCheckpoint writes for `model`.
int64_t AdapterCheckpointBytes(torch::nn::Module& model,
                               const AdapterLayout& layout);

struct AdapterCheckpointInfo {
  gemma::v1::PeftSpec spec;  // as saved (defaults resolved)
  std::string base_model;    // the base model folder it was trained on
  int64_t step = 0;
};

// Reads DIR/adapter.json; errors name the file and field. Target names are
// checked against every family's (AllAdapterTargetNames()); the model's own
// are checked when loading.
absl::StatusOr<AdapterCheckpointInfo> ReadAdapterCheckpointInfo(
    const std::string& dir);

// Attaches adapters to `model` as the checkpoint's spec says (see
// AttachAdapters) and loads their values. Errors name the file and tensor:
// FAILED_PRECONDITION when the model's base projection shape differs from the
// one recorded in the checkpoint (a different base model), INVALID_ARGUMENT for
// missing or mis-shaped tensors or targets the model's family lacks. On error
// `model` has no adapters attached.
absl::StatusOr<AdapterCheckpointInfo> LoadAdapterCheckpoint(
    const std::string& dir, torch::nn::Module& model,
    const AdapterLayout& layout);
absl::StatusOr<AdapterCheckpointInfo> LoadAdapterCheckpoint(
    const std::string& dir, Gemma3Model& model);
absl::StatusOr<AdapterCheckpointInfo> LoadAdapterCheckpoint(
    const std::string& dir, Gemma4Model& model);

// Copies the tensors of adapter checkpoint `dir` into the adapters already
// attached to `model` (filled in place, not replaced: an optimizer may hold
// them); on a tensor-parallel model each rank takes its shard. The file must
// hold exactly the attached adapters' tensors at their whole shapes;
// INVALID_ARGUMENT naming the file and tensor otherwise.
absl::Status LoadAdapterValues(const std::string& dir, torch::nn::Module& model,
                               const AdapterLayout& layout);

// Folds every attached adapter into its projection's weight (in place, under
// no_grad) and removes the adapters. Afterwards the model computes what it
// computed with the adapters (in eval mode) and has no adapter parameters.
// Does not change requires_grad of the base weights.
absl::Status MergeAdapters(torch::nn::Module& model,
                           const AdapterLayout& layout);
absl::Status MergeAdapters(Gemma3Model& model);
absl::Status MergeAdapters(Gemma4Model& model);

// Writes a Hugging Face PEFT adapter folder `out_dir` (via a temp folder and
// rename) for the adapters attached to `model`:
//   adapter_config.json: peft_type "LORA", task_type null, r, lora_alpha,
//     lora_dropout, use_dora, target_modules (HF module names: a list of leaf
//     names, or a regex full-matching exactly the adapted modules when leaf
//     names would pick more: text and vision share a leaf name but only one
//     of them is targeted, or the layout forbids leaf names, as Gemma 4 VL
//     does), base_model_name_or_path, bias "none", ...
//   adapter_model.safetensors: the keys peft 0.21 saves for the layout's HF
//     class (Gemma3ForConditionalGeneration / Gemma3ForCausalLM /
//     Gemma4ForConditionalGeneration / Gemma4ForCausalLM), e.g.
//     "base_model.model.model.language_model.layers.0.self_attn.q_proj.
//     lora_A.weight", "...lora_B.weight", DoRA "...lora_magnitude_vector";
//     fused q/k/v and gate/up split back into their HF parts (Gemma 4 K=V
//     layers: q_proj and k_proj only, HF has no v_proj there; Gemma 4 vision:
//     "...self_attn.q_proj.linear.lora_A.weight", the nn.Linear inside HF's
//     Gemma4ClippableLinear). fp32.
// `spec` gives rank/alpha/dropout/method (as used for AttachAdapters).
// FAILED_PRECONDITION when nothing is attached or a projection's whole shape
// differs from the config's. On a TP model: the whole adapter, collective
// over the TP group, TP rank 0 writes (see the top).
absl::Status ExportPeftAdapter(torch::nn::Module& model,
                               const AdapterLayout& layout,
                               const gemma::v1::PeftSpec& spec,
                               const std::string& out_dir,
                               const std::string& base_model_name_or_path);
absl::Status ExportPeftAdapter(Gemma3Model& model,
                               const gemma::v1::PeftSpec& spec,
                               const std::string& out_dir,
                               const std::string& base_model_name_or_path);
absl::Status ExportPeftAdapter(Gemma4Model& model,
                               const gemma::v1::PeftSpec& spec,
                               const std::string& out_dir,
                               const std::string& base_model_name_or_path);

}  // namespace gemma

#endif  // GEMMA_MODEL_LORA_H_
