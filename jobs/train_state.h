// What a training checkpoint holds besides the weights, and the folder
// layout the trainers write:
//
//   ROOT/step-00000010/model/               our sharded checkpoint
//                                           (model/checkpoint.h) of the weights
//                                           being trained (peft: the adapters)
//   ROOT/step-00000010/optimizer.safetensors  AdamW state (jobs/optimizer.h)
//                                           and "rng/cpu" (LibTorch's CPU
//                                           generator state)
//   ROOT/step-00000010/train_state.json     TrainState below
//
// A step folder is built as step-N.tmp and renamed when complete, so a folder
// named step-N (no suffix) is always whole; LatestCheckpoint picks the
// highest such N. This is how a new attempt of a job finds where to resume:
// the root is a pure function of the job (spec.checkpoint.root, else
// $TMPDIR/gemma-train/<job id>), so a retried attempt on the same machine or
// shared file system sees the folders of the attempts before it.
#ifndef GEMMA_JOBS_TRAIN_STATE_H_
#define GEMMA_JOBS_TRAIN_STATE_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/file_io.h"
#include "data/batch.h"
#include "model/checkpoint.h"
#include "model/comm.h"

namespace gemma {

struct TrainState {
  int64_t step = 0;       // optimizer steps done
  int64_t max_steps = 0;  // the schedule's total
  int dp = 1;             // DP ranks that wrote it
  int tp = 1;             // TP ranks that wrote it
  int ep = 1;             // EP size of the run that wrote it
  // Train loader position of each DP rank after `step` steps.
  std::vector<LoaderPosition> loader;
  std::vector<double> losses;             // training loss of steps 1..step
  std::map<int64_t, double> eval_losses;  // step -> validation loss
  std::string base_model;  // the model folder training started from
  std::string job;         // jobs/{id} that wrote it (may be empty)

  std::string ToJson() const;
  // InvalidArgument naming `file` and the field on malformed input.
  static absl::StatusOr<TrainState> FromJson(const std::string& text,
                                             const std::string& file);
};

inline constexpr char kTrainStateFile[] = "train_state.json";
inline constexpr char kOptimizerFile[] = "optimizer.safetensors";
inline constexpr char kModelSubdir[] = "model";

// ROOT/step-%08d.
std::string StepDir(const std::string& root, int64_t step);
// The complete step folder with the highest step under `root`; nullopt when
// there is none (or `root` does not exist).
std::optional<std::string> LatestCheckpoint(const std::string& root);
// Whether `dir` is a training step folder (holds train_state.json).
bool IsTrainCheckpoint(const std::string& dir);

// The JSON files of a step folder are written with WriteFileAtomic
// (common/file_io.h, included above).
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

// A safetensors file of CPU tensors (written atomically) and back (copies,
// owned by the returned tensors). Errors name the file.
absl::Status WriteTensorFile(const std::string& path,
                             const std::map<std::string, at::Tensor>& tensors);
absl::StatusOr<std::map<std::string, at::Tensor>> ReadTensorFile(
    const std::string& path);

// Writes the parameters of `module` (named_parameters(), our names) as our
// sharded checkpoint at DIR (TP=1; DIR.tmp then rename; replaces DIR).
// Returns the bytes written.
absl::StatusOr<int64_t> WriteModuleCheckpoint(const std::string& dir,
                                              torch::nn::Module& module,
                                              const std::string& config_json,
                                              int64_t num_kv_heads,
                                              int64_t step);

// The same for a module holding rank tp.rank()'s shards of a tensor-parallel
// layout (model/param_table.h's split rules; names and dtypes as the
// unsharded module's): collective over `tp`, every rank of the group calls
// it. Each writes its rank file into DIR.tmp; rank 0 writes the manifest
// and renames DIR.tmp to DIR once every rank's file is in (replacing DIR);
// all return after that. vocab_size: the unpadded vocabulary (the embedding
// shards are padded rows; unused with one rank). Returns this rank's bytes.
// Whatever fails on one rank fails on all, with that rank's error there.
absl::StatusOr<int64_t> WriteModuleCheckpointShard(
    const std::string& dir, torch::nn::Module& module,
    const std::string& config_json, int64_t num_kv_heads, int64_t vocab_size,
    int64_t step, Comm& tp);

// Collective over `comm`: OK on every rank when `mine` is OK on every rank;
// otherwise a failed rank gets its own error and the others an error naming
// `what`. Errors of the collective itself come back as a Status too.
absl::Status AgreeAllOk(Comm& comm, const absl::Status& mine,
                        const std::string& what);

// Collective over `comm`: every rank's rank file (`mine`, rank i of the
// group holding rank-0000i) as the ManifestFile list a commit needs, in rank
// order (on every rank).
absl::StatusOr<std::vector<ManifestFile>> GatherManifestFiles(
    Comm& comm, const ManifestFile& mine, const std::string& dir);

// Copies a file (through a temporary name).
absl::Status CopyFile(const std::string& from, const std::string& to);

}  // namespace gemma

#endif  // GEMMA_JOBS_TRAIN_STATE_H_
