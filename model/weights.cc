#include "model/weights.h"

#include <torch/torch.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_io.h"
#include "common/status_macros.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/convert.h"
#include "model/hf_mapping.h"
#include "model/param_table.h"
#include "model/safetensors_torch.h"

namespace gemma {
namespace {

// Rank `rank`'s shard (tp ways) of every tensor of `source`, copied out of the
// mappings.
absl::StatusOr<std::map<std::string, at::Tensor>> Materialize(
    GlobalTensorSource& source, const ShardDims& dims, int tp, int rank) {
  std::map<std::string, at::Tensor> out;
  for (const auto& e : source.entries()) {
    GEMMA_ASSIGN_OR_RETURN(ParamSpec spec, LookupParam(e.name));
    GEMMA_ASSIGN_OR_RETURN(ShardLayout layout,
                           ComputeShard(spec, e.shape, dims, tp, rank));
    GEMMA_ASSIGN_OR_RETURN(VirtualTensor global, source.Global(e.name));
    at::Tensor t =
        torch::empty(layout.shard_shape, torch::dtype(ToScalarType(e.dtype)));
    GEMMA_RETURN_IF_ERROR(
        CopyShard(global, layout, static_cast<uint8_t*>(t.data_ptr())));
    out.emplace(e.name, std::move(t));
  }
  return out;
}

// Files holding our names: every key of the first model file starts with one
// of our prefixes.
bool HoldsOurNames(const std::vector<std::string>& files) {
  if (files.empty()) return false;
  auto file = SafetensorsFile::Open(files.front());
  if (!file.ok() || (*file)->tensors().empty()) return false;
  for (const auto& t : (*file)->tensors()) {
    if (!absl::StartsWith(t.name, "text.") &&
        !absl::StartsWith(t.name, "vision.") &&
        !absl::StartsWith(t.name, "projector.")) {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<ModelWeights> LoadModelWeights(const std::string& dir, int tp,
                                              int rank) {
  if (tp < 1 || rank < 0 || rank >= tp) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": bad tensor-parallel rank ", rank, " of ", tp));
  }
  ModelWeights w;
  if (PathExists(dir + "/manifest.json")) {
    w.kind = "checkpoint";
    GEMMA_ASSIGN_OR_RETURN(auto reader, CheckpointReader::Open(dir));
    w.config_json = reader->config_json();
    GEMMA_ASSIGN_OR_RETURN(
        w.tensors, Materialize(*reader, reader->manifest().dims, tp, rank));
    return w;
  }
  if (!PathExists(dir + "/config.json")) {
    return absl::NotFoundError(
        absl::StrCat(dir,
                     ": not a model folder (no manifest.json of our "
                     "checkpoint, no config.json)"));
  }
  GEMMA_ASSIGN_OR_RETURN(w.config_json, ReadFileToString(dir + "/config.json"));
  std::vector<std::string> files = ListFilesWithSuffix(dir, ".safetensors");
  std::vector<std::string> model_files;
  for (const auto& f : files) {
    if (absl::StrContains(f.substr(dir.size()), "/model"))
      model_files.push_back(f);
  }
  if (!model_files.empty()) files = model_files;
  if (files.empty())
    return absl::NotFoundError(absl::StrCat(dir, ": no *.safetensors files"));

  if (!PathExists(dir + "/model.safetensors.index.json") &&
      HoldsOurNames(files)) {
    w.kind = "ours";
    for (const auto& path : files) {
      GEMMA_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
      for (const auto& info : file->tensors()) {
        GEMMA_ASSIGN_OR_RETURN(at::Tensor view, TensorView(file, info.name));
        if (!w.tensors.emplace(info.name, view.clone()).second) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": tensor '", info.name, "' also in another file"));
        }
      }
    }
    if (tp > 1) {
      GEMMA_ASSIGN_OR_RETURN(
          HfConfigLite lite,
          ParseHfConfigLite(w.config_json, dir + "/config.json"));
      for (auto& [name, t] : w.tensors) {
        GEMMA_ASSIGN_OR_RETURN(
            t, SliceShard(name, t, ShardDims{lite.num_kv_heads}, tp, rank));
      }
    }
    return w;
  }
  w.kind = "hf";
  GEMMA_ASSIGN_OR_RETURN(auto source, OpenHfFolder(dir));
  GEMMA_ASSIGN_OR_RETURN(
      HfConfigLite lite,
      ParseHfConfigLite(w.config_json, dir + "/config.json"));
  GEMMA_ASSIGN_OR_RETURN(
      w.tensors, Materialize(*source, ShardDims{lite.num_kv_heads}, tp, rank));
  return w;
}

absl::StatusOr<at::Tensor> SliceShard(const std::string& name,
                                      const at::Tensor& global,
                                      const ShardDims& dims, int tp, int rank) {
  GEMMA_ASSIGN_OR_RETURN(ParamSpec spec, LookupParam(name));
  const at::Tensor src = global.contiguous();
  std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
  GEMMA_ASSIGN_OR_RETURN(ShardLayout layout,
                         ComputeShard(spec, shape, dims, tp, rank));
  VirtualTensor v = VirtualTensor::Contiguous(
      static_cast<const uint8_t*>(src.data_ptr()), shape, src.element_size());
  at::Tensor out = torch::empty(layout.shard_shape, src.options());
  GEMMA_RETURN_IF_ERROR(
      CopyShard(v, layout, static_cast<uint8_t*>(out.data_ptr())));
  return out;
}

absl::StatusOr<Gemma3Model> LoadModel(const std::string& dir) {
  GEMMA_ASSIGN_OR_RETURN(ModelWeights w, LoadModelWeights(dir));
  GEMMA_ASSIGN_OR_RETURN(ModelConfig config,
                         ParseModelConfigText(w.config_json, dir));
  for (auto& [name, t] : w.tensors) t = t.to(torch::kFloat32);
  auto model = BuildGemma3Model(config, w.tensors);
  if (!model.ok()) {
    return absl::Status(
        model.status().code(),
        absl::StrCat(dir, " (", w.kind, "): ", model.status().message()));
  }
  return model;
}

}  // namespace gemma
