#include "model/safetensors_torch.h"

#include <torch/torch.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace gemma {

c10::ScalarType ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kBool:
      return torch::kBool;
    case DType::kU8:
      return torch::kUInt8;
    case DType::kI8:
      return torch::kInt8;
    case DType::kI16:
      return torch::kInt16;
    case DType::kI32:
      return torch::kInt32;
    case DType::kI64:
      return torch::kInt64;
    case DType::kF16:
      return torch::kFloat16;
    case DType::kBF16:
      return torch::kBFloat16;
    case DType::kF32:
      return torch::kFloat32;
    case DType::kF64:
      return torch::kFloat64;
  }
  return torch::kFloat32;
}

absl::StatusOr<DType> FromScalarType(c10::ScalarType type) {
  for (DType d :
       {DType::kBool, DType::kU8, DType::kI8, DType::kI16, DType::kI32,
        DType::kI64, DType::kF16, DType::kBF16, DType::kF32, DType::kF64}) {
    if (ToScalarType(d) == type) return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("torch dtype ", c10::toString(type),
                   " has no safetensors equivalent here"));
}

absl::StatusOr<at::Tensor> TensorView(
    std::shared_ptr<const SafetensorsFile> file, absl::string_view name) {
  GEMMA_ASSIGN_OR_RETURN(const TensorInfo* info, file->Get(name));
  absl::Span<const uint8_t> bytes = file->Bytes(*info);
  try {
    auto keep = std::move(file);
    // from_blob needs a non-null pointer even for empty tensors.
    static uint8_t empty[8];
    void* data = bytes.empty() ? empty : const_cast<uint8_t*>(bytes.data());
    return torch::from_blob(
        data, info->shape, [keep](void*) {},
        torch::TensorOptions().dtype(ToScalarType(info->dtype)));
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("tensor '", name, "': ", e.what_without_backtrace()));
  }
}

absl::Status AddTensor(SafetensorsWriter& writer, std::string name,
                       const at::Tensor& tensor) {
  if (!tensor.device().is_cpu() || !tensor.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': must be a contiguous CPU tensor"));
  }
  GEMMA_ASSIGN_OR_RETURN(DType dtype, FromScalarType(tensor.scalar_type()));
  std::vector<int64_t> shape(tensor.sizes().begin(), tensor.sizes().end());
  const uint8_t* data = static_cast<const uint8_t*>(tensor.data_ptr());
  return writer.AddBytes(std::move(name), dtype, std::move(shape),
                         {data, static_cast<size_t>(tensor.nbytes())});
}

absl::StatusOr<at::Tensor> ReadShardTensor(CheckpointReader& reader,
                                           const std::string& name, int tp,
                                           int rank) {
  GEMMA_ASSIGN_OR_RETURN(ShardLayout layout, reader.Layout(name, tp, rank));
  const ManifestTensor* t = reader.manifest().Find(name);
  try {
    at::Tensor out =
        torch::empty(layout.shard_shape,
                     torch::TensorOptions().dtype(ToScalarType(t->dtype)));
    GEMMA_RETURN_IF_ERROR(reader.ReadShard(
        name, tp, rank, static_cast<uint8_t*>(out.data_ptr())));
    return out;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("tensor '", name, "': ", e.what_without_backtrace()));
  }
}

}  // namespace gemma
