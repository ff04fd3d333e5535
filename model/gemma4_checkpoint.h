// Gemma 4 weights for one rank of a tensor- and expert-parallel job, read
// from and written to our sharded checkpoint (model/checkpoint.h, layout
// {tp, ep}: MoE parallel folding, model/param_table.h CheckpointLayout).
//
// A rank's view ("local" tensors, our names text.*, vision.*, projector.*):
//   - dense text weights: TP rank tp_index's shard by the parameter table's
//     rule: attn.qkv / attn.qk by KV groups, or, when a layer type has fewer
//     KV heads than tp, by query heads with the group's K (and V) rows
//     replicated ([(nq / tp + m) hd, H], q rows first; param_table.h
//     ComputeShard); attn.o and mlp.down by columns; mlp.gate_up by rows of
//     gate then of up; text.embed by rows, padded with zero rows up to a
//     multiple of tp ([ceil(vocab / tp), H]);
//   - MoE experts ("text.layers.{i}.moe.experts.gate_up" / ".down"): EP rank
//     ep_index's slice [E / ep, ...] of experts [ep_index E / ep, ...)
//     (model/moe.h's split), whole over TP;
//   - everything else (norms, layer_scalar, router.*, vision.*, projector.*)
//     whole.
// At {tp 1, ep} this is the EP-only view the trainer used before Gemma 4 TP.
//
// Reading: LoadGemma4RankWeights accepts our Gemma 4 checkpoint (any stored
// layout) or an HF Gemma 4 folder (text-only or VL) and returns that view, as
// stored (dtype kept, CPU). Only the bytes of the rank's shards are read from
// the mapped files (rank files that hold none of them are not even opened).
//
// Writing from training: in a job of world tp x dp (TP fastest, EP groups of
// ep consecutive ranks), job ranks w < layout.world() = max(tp, ep) each call
// WriteGemma4RankFile(dir, config, layout, w, their local tensors); it writes
// what file rank w stores (dense shards when w < tp, expert slices when
// w < ep; nothing is stored twice). After all of them are done, one process
// calls CommitGemma4Checkpoint with rank 0's tensors and every ManifestFile.
//
//   // on each job rank w < layout.world():
//   GEMMA_ASSIGN_OR_RETURN(ManifestFile f,
//       WriteGemma4RankFile(dir, config, layout, w, Gemma4StateDict(m)));
//   // gather the files to rank 0, then there:
//   GEMMA_RETURN_IF_ERROR(CommitGemma4Checkpoint(dir, config_json, config,
//       layout, step, rank0_tensors, files));
#ifndef GEMMA_MODEL_GEMMA4_CHECKPOINT_H_
#define GEMMA_MODEL_GEMMA4_CHECKPOINT_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/checkpoint.h"
#include "model/gemma4_config.h"
#include "model/gemma4_names.h"  // Gemma4ShardDims

namespace gemma {

struct Gemma4RankWeights {
  std::string config_json;  // the HF config.json text
  Gemma4ModelConfig config;
  std::string kind;  // "checkpoint" or "hf"
  int tp_size = 1, tp_rank = 0;
  int ep_size = 1, ep_rank = 0;
  std::map<std::string, at::Tensor> tensors;  // our names, this rank's view
};

// The view of TP rank `tp_index` / EP rank `ep_index` of `layout` (above).
// INVALID_ARGUMENT when the model does not split so (CheckConvertLayout
// naming "tp" / "ep" and the config values) or an index is out of range;
// NOT_FOUND / DATA_LOSS naming the file for a missing or corrupt rank file;
// errors name the folder and tensor.
absl::StatusOr<Gemma4RankWeights> LoadGemma4RankWeights(
    const std::string& dir, const CheckpointLayout& layout, int tp_index,
    int ep_index, bool verify_checksums = true);

// Writes DIR.tmp/rank-NNNNN.safetensors (creating DIR.tmp if needed) for file
// rank `rank` of `layout` (tp_index = rank % tp, ep_index = rank % ep) with
// what StoresShard says that rank stores. `tensors`: that rank's local
// tensors (the view above; tensors the rank does not store are ignored).
// `config` gives the global shapes (vocab size for the padded embedding,
// heads for qkv / qk). INVALID_ARGUMENT naming the tensor when a local shape
// is not the shard of its global shape, or a name is no part of `config`'s
// model.
absl::StatusOr<ManifestFile> WriteGemma4RankFile(
    const std::string& dir, const Gemma4ModelConfig& config,
    const CheckpointLayout& layout, int rank,
    const std::map<std::string, at::Tensor>& tensors);

// Writes the manifest (every tensor's global dtype/shape from rank 0's
// tensors, in which every name is present, and `config`; the split dims
// Gemma4ShardDims(config.text)) and publishes DIR (replacing it if
// `overwrite`). `files`: one per file rank (layout.world()).
absl::Status CommitGemma4Checkpoint(
    const std::string& dir, const std::string& config_json,
    const Gemma4ModelConfig& config, const CheckpointLayout& layout,
    int64_t step, const std::map<std::string, at::Tensor>& rank0_tensors,
    const std::vector<ManifestFile>& files, bool overwrite = true);

}  // namespace gemma

#endif  // GEMMA_MODEL_GEMMA4_CHECKPOINT_H_
