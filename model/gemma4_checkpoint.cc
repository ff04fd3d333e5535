#include "model/gemma4_checkpoint.h"

#include <torch/torch.h>

#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/convert.h"
#include "model/param_table.h"
#include "model/safetensors_torch.h"

namespace gemma {
namespace {

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Our Gemma 4 tensors are written with num_kv_heads 1 (no TP split yet).
constexpr ShardDims kGemma4Dims{1};

absl::StatusOr<at::Tensor> Empty(const std::vector<int64_t>& shape,
                                 DType dtype) {
  try {
    return torch::empty(shape,
                        torch::TensorOptions().dtype(ToScalarType(dtype)));
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
}

// The global shape of `name` held as `local` by an EP rank of `ep_size`.
absl::StatusOr<std::vector<int64_t>> GlobalShape(const std::string& name,
                                                 const at::Tensor& local,
                                                 int ep_size, ParamSpec* spec) {
  GEMMA_ASSIGN_OR_RETURN(*spec, LookupParam(name));
  std::vector<int64_t> shape(local.sizes().begin(), local.sizes().end());
  if (spec->split == SplitKind::kExperts && !shape.empty()) shape[0] *= ep_size;
  return shape;
}

}  // namespace

absl::StatusOr<Gemma4RankWeights> LoadGemma4RankWeights(const std::string& dir,
                                                        int ep_size,
                                                        int ep_rank,
                                                        bool verify_checksums) {
  if (ep_size < 1 || ep_rank < 0 || ep_rank >= ep_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": bad EP rank ", ep_rank, " of ", ep_size));
  }
  Gemma4RankWeights out;
  out.ep_size = ep_size;
  out.ep_rank = ep_rank;
  std::unique_ptr<CheckpointReader> reader;
  std::unique_ptr<GlobalTensorSource> hf;
  GlobalTensorSource* source = nullptr;
  std::string where;
  if (PathExists(dir + "/manifest.json")) {
    GEMMA_ASSIGN_OR_RETURN(reader,
                           CheckpointReader::Open(dir, verify_checksums));
    source = reader.get();
    out.kind = "checkpoint";
    where = dir + "/manifest.json: model_config";
  } else {
    where = dir + "/config.json";
    GEMMA_ASSIGN_OR_RETURN(std::string text, ReadText(where));
    if (!IsGemma4ConfigText(text)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": not a Gemma 4 config (model_type)"));
    }
    GEMMA_ASSIGN_OR_RETURN(hf, OpenHfFolder(dir));
    source = hf.get();
    out.kind = "hf";
  }
  out.config_json = source->config_json();
  if (!IsGemma4ConfigText(out.config_json)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": not a Gemma 4 config (model_type)"));
  }
  GEMMA_ASSIGN_OR_RETURN(out.config,
                         ParseGemma4ModelConfigText(out.config_json, where));
  ModelFolderInfo info;
  info.config_source = where;
  info.gemma4 = true;
  info.num_experts =
      out.config.text.enable_moe_block ? out.config.text.num_experts : 0;
  GEMMA_RETURN_IF_ERROR(CheckConvertLayout(info, 1, ep_size, "tp", "ep_size"));
  const CheckpointLayout layout{1, ep_size};
  for (const auto& e : source->entries()) {
    GEMMA_ASSIGN_OR_RETURN(ParamSpec spec, LookupParam(e.name));
    GEMMA_ASSIGN_OR_RETURN(
        ShardLayout l,
        ComputeLayoutShard(spec, e.shape, kGemma4Dims, layout, ep_rank));
    GEMMA_ASSIGN_OR_RETURN(at::Tensor t, Empty(l.shard_shape, e.dtype));
    uint8_t* dst = static_cast<uint8_t*>(t.data_ptr());
    if (reader != nullptr) {
      GEMMA_RETURN_IF_ERROR(reader->ReadShard(e.name, layout, ep_rank, dst));
    } else {
      GEMMA_ASSIGN_OR_RETURN(VirtualTensor v, source->Global(e.name));
      absl::Status s = CopyShard(v, l, dst);
      if (!s.ok()) {
        return absl::Status(s.code(), absl::StrCat(dir, ": tensor '", e.name,
                                                   "': ", s.message()));
      }
    }
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

absl::StatusOr<ManifestFile> WriteGemma4RankFile(
    const std::string& dir, int ep_size, int ep_rank,
    const std::map<std::string, at::Tensor>& tensors) {
  const CheckpointLayout layout{1, ep_size};
  std::vector<at::Tensor> keep;
  std::vector<RankShard> shards;
  for (const auto& [name, t] : tensors) {
    ParamSpec spec;
    GEMMA_ASSIGN_OR_RETURN(std::vector<int64_t> global,
                           GlobalShape(name, t, ep_size, &spec));
    if (!StoresShard(spec, layout, ep_rank)) continue;  // rank 0 stores it
    GEMMA_ASSIGN_OR_RETURN(DType dtype, FromScalarType(t.scalar_type()));
    at::Tensor c = t.detach().to(torch::kCPU).contiguous();
    keep.push_back(c);
    shards.push_back(
        {name, dtype, global, static_cast<const uint8_t*>(c.data_ptr())});
  }
  return WriteRankFile(dir, layout, ep_rank, kGemma4Dims, shards);
}

absl::Status CommitGemma4Checkpoint(
    const std::string& dir, const std::string& config_json, int ep_size,
    int64_t step, const std::map<std::string, at::Tensor>& rank0_tensors,
    const std::vector<ManifestFile>& files, bool overwrite) {
  CheckpointCommit commit;
  commit.tp = 1;
  commit.ep = ep_size;
  commit.step = step;
  commit.dims = kGemma4Dims;
  commit.config_json = config_json;
  commit.files = files;
  commit.overwrite = overwrite;
  for (const auto& [name, t] : rank0_tensors) {
    ParamSpec spec;
    GEMMA_ASSIGN_OR_RETURN(std::vector<int64_t> global,
                           GlobalShape(name, t, ep_size, &spec));
    GEMMA_ASSIGN_OR_RETURN(DType dtype, FromScalarType(t.scalar_type()));
    commit.tensors.push_back({name, dtype, global});
  }
  return CommitCheckpoint(dir, commit);
}

}  // namespace gemma
