// Gemma 4 weights for one expert-parallel rank, read from and written to our
// sharded checkpoint (model/checkpoint.h, layout {tp = 1, ep}).
//
// Reading: LoadGemma4RankWeights(dir, ep_size, ep_rank) accepts our Gemma 4
// checkpoint (any stored ep) or an HF Gemma 4 folder (text-only or VL) and
// returns every tensor under our names (text.*, vision.*, projector.*), as
// stored (dtype kept, CPU): expert tensors ("text.layers.{i}.moe.experts.
// gate_up" / ".down") only this rank's slice [E / ep_size, ...] of experts
// [ep_rank E / ep_size, (ep_rank + 1) E / ep_size) (model/moe.h's split),
// everything else whole. Only the bytes of that slice are read from the
// mapped files (a checkpoint's rank files that hold none of it are not even
// opened). The result feeds BuildGemma4Model / LoadGemma4ModuleWeights with
// the same ep_rank / ep_size (they take local or global expert tensors).
//
// Writing from training (the EP analogue of jobs/train_state.cc's
// WriteModuleCheckpointShard over WriteRankFile / CommitCheckpoint): every EP
// rank calls WriteGemma4RankFile with its own tensors (Gemma4StateDict's
// shape: experts its slice, the rest whole); it writes what this rank stores
// (its expert slices; on rank 0 also every replicated tensor, which other
// ranks leave out, so nothing is stored ep times). After all ranks are done,
// rank 0 calls CommitGemma4Checkpoint with every rank's ManifestFile.
//
//   // on each EP rank r of n:
//   GEMMA_ASSIGN_OR_RETURN(ManifestFile f,
//                          WriteGemma4RankFile(dir, n, r, Gemma4StateDict(m)));
//   // gather the files to rank 0, then there:
//   GEMMA_RETURN_IF_ERROR(CommitGemma4Checkpoint(dir, config_json, n, step,
//                                                rank0_tensors, files));
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

namespace gemma {

struct Gemma4RankWeights {
  std::string config_json;  // the HF config.json text
  Gemma4ModelConfig config;
  std::string kind;  // "checkpoint" or "hf"
  int ep_size = 1, ep_rank = 0;
  std::map<std::string, at::Tensor> tensors;  // our names, this rank's view
};

// INVALID_ARGUMENT when ep_size does not divide num_experts or ep_rank is out
// of range; NOT_FOUND / DATA_LOSS naming the file for a missing or corrupt
// rank file; errors name the folder and tensor.
absl::StatusOr<Gemma4RankWeights> LoadGemma4RankWeights(
    const std::string& dir, int ep_size, int ep_rank,
    bool verify_checksums = true);

// Writes DIR.tmp/rank-NNNNN.safetensors for EP rank `ep_rank` of `ep_size`
// (rank 0 creates DIR.tmp if needed; so does every rank). `tensors`: this
// rank's tensors under our names, experts as its slice; rank 0 writes the
// replicated ones, the others ignore them.
absl::StatusOr<ManifestFile> WriteGemma4RankFile(
    const std::string& dir, int ep_size, int ep_rank,
    const std::map<std::string, at::Tensor>& tensors);

// Writes the manifest (every tensor's global shape from rank 0's `tensors`,
// experts times ep_size) and publishes DIR (replacing it if `overwrite`).
absl::Status CommitGemma4Checkpoint(
    const std::string& dir, const std::string& config_json, int ep_size,
    int64_t step, const std::map<std::string, at::Tensor>& rank0_tensors,
    const std::vector<ManifestFile>& files, bool overwrite = true);

}  // namespace gemma

#endif  // GEMMA_MODEL_GEMMA4_CHECKPOINT_H_
