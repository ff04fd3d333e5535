// Helpers of the `gemmactl local` commands: loading a local model folder and
// minimal safetensors I/O.
#ifndef GEMMA_CLI_LOCAL_MODEL_H_
#define GEMMA_CLI_LOCAL_MODEL_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/vl_model.h"

namespace gemma::cli {

// Builds the model in `dir`: our checkpoint, an HF folder, or config.json +
// safetensors in our names (model/weights.h).
absl::StatusOr<Gemma3Model> LoadLocalModel(const std::string& dir);

// Minimal safetensors I/O for the local commands (F32, BF16, F16, I64, I32).
// TODO(merge): switch to model/safetensors_torch.h.
absl::StatusOr<std::map<std::string, at::Tensor>> ReadSafetensors(
    const std::string& path);
// Writes to `path`.tmp, then renames.
absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, at::Tensor>& tensors);

}  // namespace gemma::cli

#endif  // GEMMA_CLI_LOCAL_MODEL_H_
