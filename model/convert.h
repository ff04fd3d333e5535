// Conversions between Hugging Face Gemma 3 folders and our sharded checkpoints.
//
//   HF folder:  config.json + model.safetensors, or
//   model-0000i-of-0000n.safetensors
//               with model.safetensors.index.json; BF16, F16 or F32 (kept as
//               is).
//   Ours:       see model/checkpoint.h.
//
// Tensors are streamed: sources are memory-mapped and each output byte is
// copied once, straight into the mapped output file. Every conversion is
// bit-exact, so HF -> ours -> HF reproduces every tensor byte for byte.
//
//   ConvertOptions opt;
//   opt.tp = 2;
//   GEMMA_ASSIGN_OR_RETURN(ConvertStats s, ConvertHfToCheckpoint("/hf/gemma3",
//   "/ckpt/s0", opt));
#ifndef GEMMA_MODEL_CONVERT_H_
#define GEMMA_MODEL_CONVERT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/checkpoint.h"

namespace gemma {

struct ConvertOptions {
  int tp = 1;                             // TP size of a written checkpoint
  uint64_t max_shard_bytes = 4ull << 30;  // HF export: split files above this
  bool verify_checksums = true;           // when reading our checkpoints
  bool overwrite = false;                 // replace an existing output folder
  ProgressFn progress;                    // (bytes done, bytes total)
};

struct ConvertStats {
  uint64_t bytes = 0;   // tensor bytes written
  int64_t tensors = 0;  // tensors written
  int64_t files = 0;    // data files written
  double seconds = 0;
};

// HF folder -> our checkpoint at options.tp (must divide num_key_value_heads).
// Errors name the file and tensor: a missing config field, a shard listed in
// the index but absent, a tensor with the wrong shape, missing or unexpected
// tensors, mixed dtypes within a fused tensor.
absl::StatusOr<ConvertStats> ConvertHfToCheckpoint(
    const std::string& hf_dir, const std::string& out_dir,
    const ConvertOptions& options);

// Our checkpoint (any TP) -> HF folder that transformers loads as is:
// config.json, model.safetensors or size-sharded files with an index, HF keys
// as transformers 5.17 writes them, no lm_head (tied).
absl::StatusOr<ConvertStats> ConvertCheckpointToHf(
    const std::string& ckpt_dir, const std::string& out_dir,
    const ConvertOptions& options);

// Our checkpoint -> our checkpoint at another TP size.
absl::StatusOr<ConvertStats> ReshardCheckpoint(const std::string& ckpt_dir,
                                               const std::string& out_dir,
                                               const ConvertOptions& options);

// An HF folder seen as our global tensors (zero-copy over the mapped files).
absl::StatusOr<std::unique_ptr<GlobalTensorSource>> OpenHfFolder(
    const std::string& hf_dir);

}  // namespace gemma

#endif  // GEMMA_MODEL_CONVERT_H_
