#include "model/gemma4_checkpoint.h"

#include <torch/torch.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_io.h"
#include "common/status_macros.h"
#include "model/convert.h"
#include "model/param_table.h"
#include "model/safetensors_torch.h"

namespace gemma {
namespace {

std::string ShapeString(const std::vector<int64_t>& s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

absl::StatusOr<at::Tensor> Empty(const std::vector<int64_t>& shape,
                                 DType dtype) {
  try {
    return torch::empty(shape,
                        torch::TensorOptions().dtype(ToScalarType(dtype)));
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
}

absl::Status CheckIndices(const std::string& dir,
                          const CheckpointLayout& layout, int tp_index,
                          int ep_index) {
  if (layout.tp < 1 || layout.ep < 1 || tp_index < 0 || tp_index >= layout.tp ||
      ep_index < 0 || ep_index >= layout.ep) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": bad TP rank ", tp_index, " / EP rank ", ep_index,
                     " of tp ", layout.tp, " x ep ", layout.ep));
  }
  return absl::OkStatus();
}

// The global shapes of a Gemma 4 model's tensors, and how a rank's local
// tensors map to them.
class GlobalShapes {
 public:
  // From `config`: every name of its model.
  GlobalShapes(const Gemma4ModelConfig& config, const CheckpointLayout& layout)
      : layout_(layout), dims_(Gemma4ShardDims(config.text)) {
    for (const ParamMapping& p : BuildGemma4HfMapping(config).params)
      shapes_[p.name] = p.shape;
  }
  const ShardDims& dims() const { return dims_; }

  // The global shape of `name`, held as `local` by TP rank tp_index / EP
  // rank ep_index; INVALID_ARGUMENT naming the tensor when `local` is not
  // that rank's shard of it.
  absl::StatusOr<std::vector<int64_t>> Of(const std::string& name,
                                          const at::Tensor& local, int tp_index,
                                          int ep_index, ParamSpec* spec) const {
    GEMMA_ASSIGN_OR_RETURN(*spec, LookupParam(name));
    const std::vector<int64_t> have(local.sizes().begin(), local.sizes().end());
    auto it = shapes_.find(name);
    if (it == shapes_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' is no part of the config's Gemma 4 model"));
    }
    const std::vector<int64_t>& global = it->second;
    GEMMA_ASSIGN_OR_RETURN(
        ShardLayout l,
        ComputeLocalShard(*spec, global, dims_, layout_, tp_index, ep_index));
    if (l.shard_shape != have) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "': shape ", ShapeString(have),
          " is not the shard of TP rank ", tp_index, " / EP rank ", ep_index,
          " of tp ", layout_.tp, " x ep ", layout_.ep, " (",
          ShapeString(l.shard_shape), " of ", ShapeString(global), ")"));
    }
    return global;
  }

 private:
  CheckpointLayout layout_;
  ShardDims dims_;
  std::map<std::string, std::vector<int64_t>> shapes_;
};

absl::Status WithDir(const absl::Status& s, const std::string& dir) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(dir, ": ", s.message()));
}

}  // namespace

absl::StatusOr<Gemma4RankWeights> LoadGemma4RankWeights(
    const std::string& dir, const CheckpointLayout& layout, int tp_index,
    int ep_index, bool verify_checksums) {
  GEMMA_RETURN_IF_ERROR(CheckIndices(dir, layout, tp_index, ep_index));
  Gemma4RankWeights out;
  out.tp_size = layout.tp;
  out.tp_rank = tp_index;
  out.ep_size = layout.ep;
  out.ep_rank = ep_index;
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
    GEMMA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(where));
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
  GEMMA_RETURN_IF_ERROR(
      CheckConvertLayout(ModelInfoFromConfig(out.config_json, where), layout.tp,
                         layout.ep, "tp", "ep"));
  const ShardDims dims = Gemma4ShardDims(out.config.text);
  for (const auto& e : source->entries()) {
    GEMMA_ASSIGN_OR_RETURN(ParamSpec spec, LookupParam(e.name));
    absl::StatusOr<ShardLayout> l =
        ComputeLocalShard(spec, e.shape, dims, layout, tp_index, ep_index);
    if (!l.ok()) return WithDir(l.status(), dir);
    GEMMA_ASSIGN_OR_RETURN(at::Tensor t, Empty(l->shard_shape, e.dtype));
    uint8_t* dst = static_cast<uint8_t*>(t.data_ptr());
    if (reader != nullptr) {
      GEMMA_RETURN_IF_ERROR(reader->ReadShard(e.name, *l, dst));
    } else {
      GEMMA_ASSIGN_OR_RETURN(VirtualTensor v, source->Global(e.name));
      absl::Status s = CopyShard(v, *l, dst);
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
    const std::string& dir, const Gemma4ModelConfig& config,
    const CheckpointLayout& layout, int rank,
    const std::map<std::string, at::Tensor>& tensors) {
  if (layout.tp < 1 || layout.ep < 1 || rank < 0 || rank >= layout.world()) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": bad rank ", rank, " of tp ", layout.tp, " x ep ", layout.ep));
  }
  const GlobalShapes shapes(config, layout);
  std::vector<at::Tensor> keep;
  std::vector<RankShard> shards;
  for (const auto& [name, t] : tensors) {
    ParamSpec spec;
    absl::StatusOr<std::vector<int64_t>> global =
        shapes.Of(name, t, layout.tp_index(rank), layout.ep_index(rank), &spec);
    if (!global.ok()) return WithDir(global.status(), dir);
    if (!StoresShard(spec, layout, rank)) continue;  // a lower rank stores it
    GEMMA_ASSIGN_OR_RETURN(DType dtype, FromScalarType(t.scalar_type()));
    at::Tensor c = t.detach().to(torch::kCPU).contiguous();
    keep.push_back(c);
    shards.push_back(
        {name, dtype, *global, static_cast<const uint8_t*>(c.data_ptr())});
  }
  return WriteRankFile(dir, layout, rank, shapes.dims(), shards);
}


absl::Status CommitGemma4Checkpoint(
    const std::string& dir, const std::string& config_json,
    const Gemma4ModelConfig& config, const CheckpointLayout& layout,
    int64_t step, const std::map<std::string, at::Tensor>& rank0_tensors,
    const std::vector<ManifestFile>& files, bool overwrite) {
  const GlobalShapes shapes(config, layout);
  CheckpointCommit commit;
  commit.tp = layout.tp;
  commit.ep = layout.ep;
  commit.step = step;
  commit.dims = shapes.dims();
  commit.config_json = config_json;
  commit.files = files;
  commit.overwrite = overwrite;
  for (const auto& [name, t] : rank0_tensors) {
    ParamSpec spec;
    absl::StatusOr<std::vector<int64_t>> global =
        shapes.Of(name, t, 0, 0, &spec);
    if (!global.ok()) return WithDir(global.status(), dir);
    GEMMA_ASSIGN_OR_RETURN(DType dtype, FromScalarType(t.scalar_type()));
    commit.tensors.push_back({name, dtype, *global});
  }
  return CommitCheckpoint(dir, commit);
}

}  // namespace gemma
