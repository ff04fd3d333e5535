// Reads the raw tensor files written by make_reference.py: NAME.bin (tensors
// back to back, little-endian) and NAME.json ({name: {dtype, shape, offset,
// nbytes}}, dtype float32 or int64). Test-only stand-in until the parity
// references move to model/safetensors.h.
#ifndef GEMMA_TESTS_PARITY_RAW_TENSORS_H_
#define GEMMA_TESTS_PARITY_RAW_TENSORS_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace gemma {

// `prefix` is the path without extension (".json" and ".bin" are added).
absl::StatusOr<std::map<std::string, at::Tensor>> ReadRawTensors(
    const std::string& prefix);

}  // namespace gemma

#endif  // GEMMA_TESTS_PARITY_RAW_TENSORS_H_
