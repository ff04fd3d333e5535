// torch::Tensor views of safetensors data (LibTorch side of
// model/safetensors.h).
#ifndef GEMMA_MODEL_SAFETENSORS_TORCH_H_
#define GEMMA_MODEL_SAFETENSORS_TORCH_H_

#include <ATen/core/Tensor.h>

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"

namespace gemma {

// The torch scalar type of `dtype`.
c10::ScalarType ToScalarType(DType dtype);
// INVALID_ARGUMENT for torch types safetensors cannot hold here.
absl::StatusOr<DType> FromScalarType(c10::ScalarType type);

// A CPU tensor viewing tensor `name` of `file` without copying. The view keeps
// `file` (its mapping) alive; it is read-only memory: writing to it crashes,
// so clone() before modifying. NOT_FOUND naming the file and tensor if absent.
absl::StatusOr<at::Tensor> TensorView(
    std::shared_ptr<const SafetensorsFile> file, absl::string_view name);

// Adds a contiguous CPU tensor to `writer` (copied at Write time: `tensor`
// must stay alive and unchanged until then).
absl::Status AddTensor(SafetensorsWriter& writer, std::string name,
                       const at::Tensor& tensor);

// Rank `rank`'s shard of checkpoint tensor `name` for a `tp`-way layout (any
// TP size the tensor allows), as a new CPU tensor of the stored dtype.
absl::StatusOr<at::Tensor> ReadShardTensor(CheckpointReader& reader,
                                           const std::string& name, int tp,
                                           int rank);

}  // namespace gemma

#endif  // GEMMA_MODEL_SAFETENSORS_TORCH_H_
