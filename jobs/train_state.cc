#include "jobs/train_state.h"

#include <dirent.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "model/checkpoint.h"
#include "model/param_table.h"
#include "model/safetensors.h"
#include "model/safetensors_torch.h"

namespace gemma {
namespace {

absl::Status Bad(const std::string& file, const std::string& field,
                 const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", field, ": ", why));
}

}  // namespace

std::string TrainState::ToJson() const {
  nlohmann::json j;
  j["step"] = step;
  j["max_steps"] = max_steps;
  j["dp"] = dp;
  j["tp"] = tp;
  if (ep != 1) j["ep"] = ep;
  nlohmann::json loaders = nlohmann::json::array();
  for (const auto& p : loader) {
    loaders.push_back({{"epoch", p.epoch}, {"index", p.index}});
  }
  j["loader"] = loaders;
  j["losses"] = losses;
  nlohmann::json evals = nlohmann::json::object();
  for (const auto& [s, l] : eval_losses) evals[std::to_string(s)] = l;
  j["eval_losses"] = evals;
  j["base_model"] = base_model;
  j["job"] = job;
  return j.dump(1);
}

absl::StatusOr<TrainState> TrainState::FromJson(const std::string& text,
                                                const std::string& file) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return Bad(file, "(document)", "not a JSON object");
  }
  TrainState s;
  auto integer = [&](const char* key, int64_t* out) -> absl::Status {
    if (!j.contains(key) || !j[key].is_number_integer())
      return Bad(file, key, "missing or not an integer");
    *out = j[key].get<int64_t>();
    return absl::OkStatus();
  };
  int64_t dp = 1;
  GEMMA_RETURN_IF_ERROR(integer("step", &s.step));
  GEMMA_RETURN_IF_ERROR(integer("max_steps", &s.max_steps));
  GEMMA_RETURN_IF_ERROR(integer("dp", &dp));
  s.dp = static_cast<int>(dp);
  if (j.contains("tp")) {
    int64_t tp = 1;
    GEMMA_RETURN_IF_ERROR(integer("tp", &tp));
    if (tp < 1) return Bad(file, "tp", "must be >= 1");
    s.tp = static_cast<int>(tp);
  }
  if (j.contains("ep")) {
    int64_t ep = 1;
    GEMMA_RETURN_IF_ERROR(integer("ep", &ep));
    if (ep < 1) return Bad(file, "ep", "must be >= 1");
    s.ep = static_cast<int>(ep);
  }
  if (!j.contains("loader") || !j["loader"].is_array())
    return Bad(file, "loader", "missing or not an array");
  for (const auto& p : j["loader"]) {
    if (!p.is_object() || !p.contains("epoch") || !p.contains("index") ||
        !p["epoch"].is_number_integer() || !p["index"].is_number_integer())
      return Bad(file, "loader", "entries must be {epoch, index} integers");
    s.loader.push_back({p["epoch"].get<int64_t>(), p["index"].get<int64_t>()});
  }
  if (static_cast<int>(s.loader.size()) != s.dp)
    return Bad(file, "loader", "needs one position per DP rank");
  if (!j.contains("losses") || !j["losses"].is_array())
    return Bad(file, "losses", "missing or not an array");
  for (const auto& l : j["losses"]) {
    if (!l.is_number()) return Bad(file, "losses", "not a number");
    s.losses.push_back(l.get<double>());
  }
  if (j.contains("eval_losses") && j["eval_losses"].is_object()) {
    for (const auto& [k, v] : j["eval_losses"].items()) {
      int64_t step = 0;
      if (!absl::SimpleAtoi(k, &step) || !v.is_number())
        return Bad(file, "eval_losses", "keys must be steps, values numbers");
      s.eval_losses[step] = v.get<double>();
    }
  }
  if (j.contains("base_model") && j["base_model"].is_string())
    s.base_model = j["base_model"].get<std::string>();
  if (j.contains("job") && j["job"].is_string())
    s.job = j["job"].get<std::string>();
  return s;
}

std::string StepDir(const std::string& root, int64_t step) {
  return absl::StrFormat("%s/step-%08d", root, step);
}

bool IsTrainCheckpoint(const std::string& dir) {
  return PathExists(absl::StrCat(dir, "/", kTrainStateFile));
}

std::optional<std::string> LatestCheckpoint(const std::string& root) {
  DIR* d = opendir(root.c_str());
  if (d == nullptr) return std::nullopt;
  int64_t best = -1;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.size() != 13 || name.rfind("step-", 0) != 0) continue;
    int64_t step = 0;
    if (!absl::SimpleAtoi(name.substr(5), &step)) continue;
    if (!IsTrainCheckpoint(absl::StrCat(root, "/", name))) continue;
    best = std::max(best, step);
  }
  closedir(d);
  if (best < 0) return std::nullopt;
  return StepDir(root, best);
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  GEMMA_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(from));
  return WriteFileAtomic(to, text);
}

absl::Status WriteTensorFile(const std::string& path,
                             const std::map<std::string, at::Tensor>& tensors) {
  std::vector<at::Tensor> keep;
  SafetensorsWriter writer;
  for (const auto& [name, t] : tensors) {
    keep.push_back(t.detach().to(torch::kCPU).contiguous());
    GEMMA_RETURN_IF_ERROR(AddTensor(writer, name, keep.back()));
  }
  return writer.Write(path);
}

absl::StatusOr<std::map<std::string, at::Tensor>> ReadTensorFile(
    const std::string& path) {
  GEMMA_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  std::map<std::string, at::Tensor> out;
  for (const auto& info : file->tensors()) {
    GEMMA_ASSIGN_OR_RETURN(at::Tensor view, TensorView(file, info.name));
    out[info.name] = view.clone();
  }
  return out;
}

absl::StatusOr<int64_t> WriteModuleCheckpoint(const std::string& dir,
                                              torch::nn::Module& module,
                                              const std::string& config_json,
                                              int64_t num_kv_heads,
                                              int64_t step) {
  SingleRankComm one;
  return WriteModuleCheckpointShard(dir, module, config_json, num_kv_heads,
                                    /*vocab_size=*/0, step, one);
}

absl::Status AgreeAllOk(Comm& comm, const absl::Status& mine,
                        const std::string& what) {
  bool all_ok = false;
  try {
    at::Tensor failed =
        torch::tensor({mine.ok() ? 0L : 1L}, torch::kLong).to(comm.device());
    comm.AllReduceSum(failed);
    all_ok = failed.cpu().item<int64_t>() == 0;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(what, ": ", e.what_without_backtrace()));
  }
  if (!mine.ok()) return mine;
  if (!all_ok) {
    return absl::InternalError(
        absl::StrCat(what, ": another rank failed (see its log)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ManifestFile>> GatherManifestFiles(
    Comm& comm, const ManifestFile& mine, const std::string& dir) {
  at::Tensor all;
  try {
    at::Tensor t = torch::tensor(
        {static_cast<int64_t>(mine.bytes), static_cast<int64_t>(mine.crc32c)},
        torch::kLong);
    all = comm.AllGather(t.unsqueeze(0).to(comm.device()), 0).cpu();
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(dir, ": ", e.what_without_backtrace()));
  }
  std::vector<ManifestFile> files;
  for (int r = 0; r < comm.size(); ++r) {
    ManifestFile f;
    f.rank = r;
    f.file = RankFileName(r);
    f.bytes = static_cast<uint64_t>(all[r][0].item<int64_t>());
    f.crc32c = static_cast<uint32_t>(all[r][1].item<int64_t>());
    files.push_back(f);
  }
  return files;
}

absl::StatusOr<int64_t> WriteModuleCheckpointShard(
    const std::string& dir, torch::nn::Module& module,
    const std::string& config_json, int64_t num_kv_heads, int64_t vocab_size,
    int64_t step, Comm& tp) {
  const int n = tp.size(), rank = tp.rank();
  const ShardDims dims{num_kv_heads};
  std::vector<at::Tensor> keep;
  std::vector<RankShard> shards;
  CheckpointCommit commit;
  commit.tp = n;
  commit.step = step;
  commit.dims = dims;
  commit.config_json = config_json;
  commit.overwrite = true;
  int64_t bytes = 0;
  // This rank's shards, checked against the split rules. Every rank goes
  // through every collective below whatever fails locally, so none waits
  // for a peer that gave up.
  auto collect = [&]() -> absl::Status {
    for (const auto& item : module.named_parameters(/*recurse=*/true)) {
      at::Tensor t = item.value().detach().to(torch::kCPU).contiguous();
      GEMMA_ASSIGN_OR_RETURN(DType dtype, FromScalarType(t.scalar_type()));
      GEMMA_ASSIGN_OR_RETURN(ParamSpec spec, LookupParam(item.key()));
      std::vector<int64_t> global(t.sizes().begin(), t.sizes().end());
      switch (spec.split) {
        case SplitKind::kReplicated:
        case SplitKind::kExperts:  // replicated over TP (no EP here)
          break;
        case SplitKind::kRows:
        case SplitKind::kRowBlocks:
          global[0] *= n;
          break;
        case SplitKind::kCols:
          global[1] *= n;
          break;
        case SplitKind::kVocabRows:
          // Padded rows per rank; with one rank the table is the whole one.
          if (n > 1) global[0] = vocab_size;
          break;
      }
      GEMMA_ASSIGN_OR_RETURN(ShardLayout layout,
                             ComputeShard(spec, global, dims, n, rank));
      if (layout.shard_shape !=
          std::vector<int64_t>(t.sizes().begin(), t.sizes().end())) {
        return absl::InternalError(
            absl::StrCat(dir, ": ", item.key(), " of rank ", rank,
                         " is not its ", n, "-way shard"));
      }
      keep.push_back(t);
      shards.push_back({item.key(), dtype, global,
                        static_cast<const uint8_t*>(t.data_ptr())});
      commit.tensors.push_back({item.key(), dtype, global});
      bytes += t.numel() * t.element_size();
    }
    return absl::OkStatus();
  };
  absl::Status st = collect();
  const std::string tmp = dir + ".tmp";
  if (st.ok() && rank == 0) {
    st = RemoveTree(tmp);
    if (st.ok()) st = MakeDirs(tmp);
  }
  // The folder exists before anyone writes into it.
  GEMMA_RETURN_IF_ERROR(AgreeAllOk(tp, st, dir));
  absl::StatusOr<ManifestFile> file = WriteRankFile(dir, n, rank, dims, shards);
  GEMMA_RETURN_IF_ERROR(AgreeAllOk(tp, file.status(), dir));
  // Rank 0 commits with every file's size and checksum.
  GEMMA_ASSIGN_OR_RETURN(std::vector<ManifestFile> files,
                         GatherManifestFiles(tp, *file, dir));
  if (rank == 0) {
    commit.files = std::move(files);
    st = CommitCheckpoint(dir, commit);
  }
  GEMMA_RETURN_IF_ERROR(AgreeAllOk(tp, st, dir));
  return bytes;
}

}  // namespace gemma
