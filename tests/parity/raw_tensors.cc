#include "tests/parity/raw_tensors.h"

#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"

namespace gemma {

absl::StatusOr<std::map<std::string, at::Tensor>> ReadRawTensors(
    const std::string& prefix) {
  const std::string index_path = prefix + ".json", blob_path = prefix + ".bin";
  std::ifstream index_in(index_path);
  if (!index_in)
    return absl::NotFoundError(absl::StrCat(index_path, ": cannot open"));
  nlohmann::json index =
      nlohmann::json::parse(index_in, nullptr, /*allow_exceptions=*/false);
  if (!index.is_object())
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": not a JSON object"));
  std::ifstream blob_in(blob_path, std::ios::binary);
  if (!blob_in)
    return absl::NotFoundError(absl::StrCat(blob_path, ": cannot open"));
  std::vector<char> blob((std::istreambuf_iterator<char>(blob_in)),
                         std::istreambuf_iterator<char>());
  std::map<std::string, at::Tensor> out;
  for (auto& [name, e] : index.items()) {
    const std::string dtype = e.value("dtype", "");
    const auto offset = e.value("offset", int64_t{-1});
    const auto nbytes = e.value("nbytes", int64_t{-1});
    std::vector<int64_t> shape = e.value("shape", std::vector<int64_t>{});
    torch::ScalarType st;
    int64_t elem;
    if (dtype == "float32") {
      st = torch::kFloat, elem = 4;
    } else if (dtype == "int64") {
      st = torch::kLong, elem = 8;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": ", name, ".dtype: unsupported \"", dtype, "\""));
    }
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    if (offset < 0 || nbytes != numel * elem ||
        offset + nbytes > static_cast<int64_t>(blob.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": ", name, ": bad offset/size"));
    }
    out[name] = torch::from_blob(blob.data() + offset, shape,
                                 torch::TensorOptions().dtype(st))
                    .clone();
  }
  return out;
}

}  // namespace gemma
