#include "model/convert.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_io.h"
#include "common/status_macros.h"
#include "model/gemma4_config.h"
#include "model/gemma4_names.h"
#include "model/hf_mapping.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

// Files a model folder carries beside its weights that its users need (the
// tokenizer, chat template and processor settings): a conversion takes them
// along, so the converted folder is as usable as the source.
constexpr const char* kCompanionFiles[] = {
    "tokenizer.model",          "tokenizer.json",
    "tokenizer_config.json",    "special_tokens_map.json",
    "chat_template.jinja",      "generation_config.json",
    "preprocessor_config.json", "processor_config.json"};

// Copies those of kCompanionFiles that `from` has into `to` (each through a
// temporary name, fsynced).
absl::Status CopyCompanionFiles(const std::string& from,
                                const std::string& to) {
  for (const char* name : kCompanionFiles) {
    const std::string src = from + "/" + name;
    if (!PathExists(src)) continue;
    std::ifstream in(src, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    if (!in) return absl::InternalError(absl::StrCat(src, ": cannot read"));
    const std::string dst = to + "/" + name, tmp = dst + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out << text.str();
      out.flush();
      if (!out) return absl::InternalError(absl::StrCat(tmp, ": cannot write"));
    }
    int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
    GEMMA_RETURN_IF_ERROR(RenamePath(tmp, dst));
  }
  return absl::OkStatus();
}

using nlohmann::json;

std::string BaseName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string ShapeString(const std::vector<int64_t>& s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

absl::Status PrefixError(const absl::Status& s, absl::string_view prefix) {
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

// An HF folder as our global tensors.
class HfSource : public GlobalTensorSource {
 public:
  // HF key -> the spelling `mapping` uses ("" to drop the key).
  using Canonical =
      std::function<absl::StatusOr<std::string>(const std::string&)>;

  // A Gemma 3 folder (any key layout model/hf_mapping.h reads).
  absl::Status Open(const std::string& dir);
  // A Gemma 4 folder (text-only or VL; model/gemma4_names.h).
  absl::Status OpenGemma4(const std::string& dir);
  const std::vector<Entry>& entries() const override { return entries_; }
  const std::string& config_json() const override { return config_json_; }
  absl::StatusOr<VirtualTensor> Global(const std::string& name) override;
  // Gemma 3 folders only.
  const HfConfigLite& config() const { return config_; }

 private:
  absl::Status OpenWith(const std::string& dir, HfMapping mapping,
                        Canonical canonical);
  struct Found {
    const SafetensorsFile* file;
    const TensorInfo* info;
  };
  absl::Status AddFile(const std::string& path,
                       const std::map<std::string, std::string>* index,
                       const std::string& index_path);

  HfConfigLite config_;
  std::string config_json_;
  HfMapping mapping_;
  Canonical canonical_;
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, Found> found_;  // canonical HF name -> where
  std::map<std::string, size_t> param_index_;
  std::vector<Entry> entries_;
};

absl::Status HfSource::AddFile(const std::string& path,
                               const std::map<std::string, std::string>* index,
                               const std::string& index_path) {
  absl::StatusOr<std::shared_ptr<const SafetensorsFile>> file =
      SafetensorsFile::Open(path);
  if (!file.ok()) {
    if (index != nullptr && absl::IsNotFound(file.status())) {
      return absl::NotFoundError(
          absl::StrCat(path, ": listed in ", index_path,
                       " but missing: ", file.status().message()));
    }
    return file.status();
  }
  const std::string base = BaseName(path);
  for (const TensorInfo& t : (*file)->tensors()) {
    if (index != nullptr) {
      auto it = index->find(t.name);
      if (it == index->end() || it->second != base) {
        return absl::DataLossError(
            absl::StrCat(path, ": tensor '", t.name,
                         "' is not listed for this file in ", index_path));
      }
    }
    absl::StatusOr<std::string> canon = canonical_(t.name);
    if (!canon.ok())
      return PrefixError(canon.status(), absl::StrCat(path, ": "));
    if (canon->empty()) continue;  // tied lm_head
    if (!found_.emplace(*canon, Found{file->get(), &t}).second) {
      return absl::DataLossError(absl::StrCat(
          path, ": tensor '", t.name, "' appears twice (as ", *canon, ")"));
    }
  }
  files_.push_back(*std::move(file));
  return absl::OkStatus();
}

absl::Status HfSource::Open(const std::string& dir) {
  GEMMA_ASSIGN_OR_RETURN(config_, ReadHfConfigLite(dir + "/config.json"));
  config_json_ = config_.raw_json;
  absl::StatusOr<HfMapping> m = BuildHfMapping(config_);
  if (!m.ok())
    return PrefixError(m.status(), absl::StrCat(dir, "/config.json: "));
  return OpenWith(dir, *std::move(m), [this](const std::string& key) {
    return CanonicalHfName(key, config_);
  });
}

absl::Status HfSource::OpenGemma4(const std::string& dir) {
  const std::string path = dir + "/config.json";
  GEMMA_ASSIGN_OR_RETURN(config_json_, ReadFileToString(path));
  GEMMA_ASSIGN_OR_RETURN(Gemma4ModelConfig config,
                         ParseGemma4ModelConfigText(config_json_, path));
  return OpenWith(dir, BuildGemma4HfMapping(config),
                  [config](const std::string& key) {
                    return CanonicalGemma4HfName(key, config);
                  });
}

absl::Status HfSource::OpenWith(const std::string& dir, HfMapping mapping,
                                Canonical canonical) {
  mapping_ = std::move(mapping);
  canonical_ = std::move(canonical);
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (PathExists(index_path)) {
    GEMMA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
    std::map<std::string, std::string> weight_map;
    try {
      json idx = json::parse(text);
      for (const auto& [k, v] : idx.at("weight_map").items())
        weight_map[k] = v.get<std::string>();
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map: ", e.what()));
    }
    std::set<std::string> shard_files;
    for (const auto& [k, f] : weight_map) {
      if (f.find('/') != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": tensor '", k, "': bad file name '", f, "'"));
      }
      shard_files.insert(f);
    }
    for (const std::string& f : shard_files) {
      GEMMA_RETURN_IF_ERROR(AddFile(dir + "/" + f, &weight_map, index_path));
    }
    for (const auto& [k, f] : weight_map) {
      bool present = false;
      for (const auto& file : files_) {
        if (BaseName(file->path()) == f && file->Find(k) != nullptr)
          present = true;
      }
      if (!present) {
        return absl::DataLossError(
            absl::StrCat(index_path, ": tensor '", k, "' is listed for ", f,
                         " but that file does not hold it"));
      }
    }
  } else {
    GEMMA_RETURN_IF_ERROR(AddFile(dir + "/model.safetensors", nullptr, ""));
  }
  // Every tensor the config implies is present with its shape; nothing else is.
  std::set<std::string> expected;
  for (const HfTensorShape& t : mapping_.hf_tensors) {
    expected.insert(t.hf_name);
    auto it = found_.find(t.hf_name);
    if (it == found_.end()) {
      return absl::NotFoundError(absl::StrCat(dir, ": tensor '", t.hf_name,
                                              "' (canonical name) is missing"));
    }
    if (it->second.info->shape != t.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          it->second.file->path(), ": tensor '", it->second.info->name,
          "' has shape ", ShapeString(it->second.info->shape),
          " but config.json implies ", ShapeString(t.shape)));
    }
  }
  for (const auto& [name, f] : found_) {
    if (!expected.count(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(f.file->path(), ": unexpected tensor '", f.info->name,
                       "' for this config"));
    }
  }
  for (size_t i = 0; i < mapping_.params.size(); ++i) {
    const ParamMapping& p = mapping_.params[i];
    const Found& first = found_.at(p.pieces[0].hf_name);
    for (const HfRows& piece : p.pieces) {
      const Found& f = found_.at(piece.hf_name);
      if (f.info->dtype != first.info->dtype) {
        return absl::InvalidArgumentError(
            absl::StrCat(f.file->path(), ": tensor '", f.info->name, "' is ",
                         DTypeName(f.info->dtype), " but ", first.info->name,
                         " (fused with it into ", p.name, ") is ",
                         DTypeName(first.info->dtype)));
      }
    }
    entries_.push_back({p.name, first.info->dtype, p.shape});
    param_index_[p.name] = i;
  }
  return absl::OkStatus();
}

absl::StatusOr<VirtualTensor> HfSource::Global(const std::string& name) {
  auto it = param_index_.find(name);
  if (it == param_index_.end())
    return absl::NotFoundError(absl::StrCat("no tensor '", name, "'"));
  const ParamMapping& p = mapping_.params[it->second];
  VirtualTensor v;
  v.shape = p.shape;
  v.elem_size = DTypeSize(entries_[it->second].dtype);
  const int64_t row_bytes = v.cols() * static_cast<int64_t>(v.elem_size);
  int64_t row = 0;
  for (const HfRows& piece : p.pieces) {
    const Found& f = found_.at(piece.hf_name);
    v.AddRows(row, piece.row_end - piece.row_begin,
              f.file->Bytes(*f.info).data() + piece.row_begin * row_bytes);
    row += piece.row_end - piece.row_begin;
  }
  return v;
}

// Runs `fn` with a progress callback that also records the byte total.
ProgressFn Tracking(const ConvertOptions& options, uint64_t* bytes) {
  return [&options, bytes](uint64_t done, uint64_t total) {
    *bytes = done;
    if (options.progress) options.progress(done, total);
  };
}

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
      .count();
}

// Shards a checkpoint of `entries` at `layout` stores (for the stats).
int64_t StoredShards(const std::vector<GlobalTensorSource::Entry>& entries,
                     const CheckpointLayout& layout) {
  int64_t n = 0;
  for (const auto& e : entries) {
    absl::StatusOr<ParamSpec> spec = LookupParam(e.name);
    for (int r = 0; spec.ok() && r < layout.world(); ++r)
      n += StoresShard(*spec, layout, r) ? 1 : 0;
  }
  return n;
}

// Whether Gemma 4 `info` splits `tp` ways (param_table.h's rules).
absl::Status CheckGemma4Tp(const ModelFolderInfo& info, int tp,
                           absl::string_view tp_field) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        tp_field, ": ", tp, ": the Gemma 4 model of ", info.config_source,
        " cannot be split ", tp, " ways: ", why));
  };
  if (info.num_heads < 1 || info.num_heads % tp != 0) {
    return bad(absl::StrCat("num_attention_heads ", info.num_heads,
                            " is not a multiple of it"));
  }
  if (info.intermediate_size % tp != 0) {
    return bad(absl::StrCat("intermediate_size ", info.intermediate_size,
                            " is not a multiple of it"));
  }
  const std::pair<const char*, int64_t> kv[] = {
      {"num_key_value_heads", info.sliding_kv_heads},
      {"num_global_key_value_heads", info.full_kv_heads}};
  for (const auto& [field, n] : kv) {
    if (n == 0 || n % tp == 0 || tp % n == 0) continue;
    return bad(absl::StrCat(field, " ", n,
                            " is neither a multiple of it nor a divisor of it "
                            "(num_attention_heads ",
                            info.num_heads, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

ModelFolderInfo ModelInfoFromConfig(const std::string& text,
                                    const std::string& source) {
  ModelFolderInfo info;
  info.config_source = source;
  info.gemma4 = IsGemma4ConfigText(text);
  if (info.gemma4) {
    absl::StatusOr<Gemma4ModelConfig> c =
        ParseGemma4ModelConfigText(text, source);
    if (c.ok()) {
      const Gemma4TextConfig& t = c->text;
      info.vl = c->is_vl();
      info.num_experts = t.enable_moe_block ? t.num_experts : 0;
      info.num_heads = t.num_heads;
      info.intermediate_size = t.intermediate_size;
      for (LayerType type : t.layer_types) {
        int64_t& kv = type == LayerType::kFull ? info.full_kv_heads
                                               : info.sliding_kv_heads;
        kv = t.layer_kv_heads(type);
      }
    }
  }
  return info;
}

absl::StatusOr<ModelFolderInfo> InspectModelFolder(const std::string& dir) {
  if (PathExists(dir + "/manifest.json")) {
    GEMMA_ASSIGN_OR_RETURN(
        auto reader, CheckpointReader::Open(dir, /*verify_checksums=*/false));
    ModelFolderInfo info = ModelInfoFromConfig(
        reader->config_json(), dir + "/manifest.json: model_config");
    info.checkpoint = true;
    info.tp = reader->manifest().tp;
    info.ep = reader->manifest().ep;
    return info;
  }
  GEMMA_ASSIGN_OR_RETURN(std::string text,
                         ReadFileToString(dir + "/config.json"));
  return ModelInfoFromConfig(text, dir + "/config.json");
}

absl::Status CheckConvertLayout(const ModelFolderInfo& info, int tp, int ep,
                                absl::string_view tp_field,
                                absl::string_view ep_field) {
  if (tp < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(tp_field, ": ", tp, " must be >= 1"));
  }
  if (ep < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(ep_field, ": ", ep, " must be >= 1"));
  }
  if (info.gemma4 && tp > 1)
    GEMMA_RETURN_IF_ERROR(CheckGemma4Tp(info, tp, tp_field));
  if (ep > 1 && info.num_experts == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        ep_field, ": ", ep, " needs a model with experts (Gemma 4 MoE), but ",
        info.config_source, " describes ",
        info.gemma4 ? "a Gemma 4 model without MoE" : "a Gemma 3 model"));
  }
  if (ep > 1 && info.num_experts % ep != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(ep_field, ": ", ep, " does not divide num_experts ",
                     info.num_experts, " of ", info.config_source));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<GlobalTensorSource>> OpenHfFolder(
    const std::string& hf_dir) {
  auto src = std::make_unique<HfSource>();
  GEMMA_ASSIGN_OR_RETURN(std::string text,
                         ReadFileToString(hf_dir + "/config.json"));
  if (IsGemma4ConfigText(text)) {
    GEMMA_RETURN_IF_ERROR(src->OpenGemma4(hf_dir));
  } else {
    GEMMA_RETURN_IF_ERROR(src->Open(hf_dir));
  }
  return std::unique_ptr<GlobalTensorSource>(std::move(src));
}

absl::StatusOr<ConvertStats> ConvertHfToCheckpoint(
    const std::string& hf_dir, const std::string& out_dir,
    const ConvertOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  GEMMA_ASSIGN_OR_RETURN(ModelFolderInfo info, InspectModelFolder(hf_dir));
  GEMMA_RETURN_IF_ERROR(
      CheckConvertLayout(info, options.tp, options.ep, "tp", "ep"));
  HfSource src;
  WriteCheckpointOptions w;
  if (info.gemma4) {
    GEMMA_RETURN_IF_ERROR(src.OpenGemma4(hf_dir));
    GEMMA_ASSIGN_OR_RETURN(
        Gemma4ModelConfig config,
        ParseGemma4ModelConfigText(src.config_json(), info.config_source));
    w.dims = Gemma4ShardDims(config.text);
  } else {
    GEMMA_RETURN_IF_ERROR(src.Open(hf_dir));
    w.dims.num_kv_heads = src.config().num_kv_heads;
  }
  ConvertStats stats;
  w.tp = options.tp;
  w.ep = options.ep;
  w.overwrite = options.overwrite;
  w.progress = Tracking(options, &stats.bytes);
  GEMMA_RETURN_IF_ERROR(WriteCheckpoint(out_dir, src, w));
  GEMMA_RETURN_IF_ERROR(CopyCompanionFiles(hf_dir, out_dir));
  stats.tensors = StoredShards(src.entries(), {options.tp, options.ep});
  stats.files = CheckpointLayout{options.tp, options.ep}.world();
  stats.seconds = Since(t0);
  return stats;
}

absl::StatusOr<ConvertStats> ReshardCheckpoint(const std::string& ckpt_dir,
                                               const std::string& out_dir,
                                               const ConvertOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  GEMMA_ASSIGN_OR_RETURN(
      auto reader, CheckpointReader::Open(ckpt_dir, options.verify_checksums));
  const ModelFolderInfo info = ModelInfoFromConfig(
      reader->config_json(), ckpt_dir + "/manifest.json: model_config");
  GEMMA_RETURN_IF_ERROR(
      CheckConvertLayout(info, options.tp, options.ep, "tp", "ep"));
  ConvertStats stats;
  WriteCheckpointOptions w;
  w.tp = options.tp;
  w.ep = options.ep;
  w.step = reader->manifest().step;
  w.dims = reader->manifest().dims;
  w.overwrite = options.overwrite;
  w.progress = Tracking(options, &stats.bytes);
  GEMMA_RETURN_IF_ERROR(WriteCheckpoint(out_dir, *reader, w));
  GEMMA_RETURN_IF_ERROR(CopyCompanionFiles(ckpt_dir, out_dir));
  stats.tensors = StoredShards(reader->entries(), {options.tp, options.ep});
  stats.files = CheckpointLayout{options.tp, options.ep}.world();
  stats.seconds = Since(t0);
  return stats;
}

absl::StatusOr<ConvertStats> ConvertCheckpointToHf(
    const std::string& ckpt_dir, const std::string& out_dir,
    const ConvertOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  if (PathExists(out_dir) && !options.overwrite) {
    return absl::AlreadyExistsError(absl::StrCat(out_dir, ": already exists"));
  }
  GEMMA_ASSIGN_OR_RETURN(
      auto reader, CheckpointReader::Open(ckpt_dir, options.verify_checksums));
  const std::string where = ckpt_dir + "/manifest.json: model_config";
  // The HF names and the config.json to write.
  HfMapping mapping;
  std::string config_out;
  if (IsGemma4ConfigText(reader->config_json())) {
    GEMMA_ASSIGN_OR_RETURN(
        Gemma4ModelConfig config,
        ParseGemma4ModelConfigText(reader->config_json(), where));
    mapping = BuildGemma4HfMapping(config);
    config_out = reader->config_json();
  } else {
    GEMMA_ASSIGN_OR_RETURN(HfConfigLite config,
                           ParseHfConfigLite(reader->config_json(), where));
    absl::StatusOr<HfMapping> m = BuildHfMapping(config);
    if (!m.ok()) return PrefixError(m.status(), where + ": ");
    mapping = *std::move(m);
    GEMMA_ASSIGN_OR_RETURN(config_out,
                           ModernizeHfConfig(reader->config_json(), where));
  }

  // hf name -> the pieces of our tensors that make it up.
  struct Use {
    const ParamMapping* param;
    int64_t our_row;
    HfRows rows;
  };
  std::map<std::string, std::vector<Use>> uses;
  for (const ParamMapping& p : mapping.params) {
    const ManifestTensor* t = reader->manifest().Find(p.name);
    if (t == nullptr) {
      return absl::NotFoundError(
          absl::StrCat(ckpt_dir, ": tensor '", p.name, "' is missing"));
    }
    if (t->shape != p.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(ckpt_dir, "/manifest.json: tensor '", p.name,
                       "' has shape ", ShapeString(t->shape),
                       " but model_config implies ", ShapeString(p.shape)));
    }
    int64_t row = 0;
    for (const HfRows& piece : p.pieces) {
      uses[piece.hf_name].push_back({&p, row, piece});
      row += piece.row_end - piece.row_begin;
    }
  }
  std::map<std::string, VirtualTensor> globals;
  for (const ParamMapping& p : mapping.params) {
    GEMMA_ASSIGN_OR_RETURN(globals[p.name], reader->Global(p.name));
  }
  // Group HF tensors into files of at most max_shard_bytes (a bigger tensor
  // gets its own).
  struct Planned {
    const HfTensorShape* t;
    DType dtype;
    uint64_t bytes;
  };
  std::vector<std::vector<Planned>> files(1);
  uint64_t in_file = 0, total = 0;
  for (const HfTensorShape& t : mapping.hf_tensors) {
    const DType dtype =
        reader->manifest().Find(uses.at(t.hf_name)[0].param->name)->dtype;
    uint64_t bytes = DTypeSize(dtype);
    for (int64_t d : t.shape) bytes *= static_cast<uint64_t>(d);
    if (!files.back().empty() && in_file + bytes > options.max_shard_bytes) {
      files.emplace_back();
      in_file = 0;
    }
    files.back().push_back({&t, dtype, bytes});
    in_file += bytes;
    total += bytes;
  }
  const std::string tmp = out_dir + ".tmp";
  GEMMA_RETURN_IF_ERROR(RemoveTree(tmp));
  GEMMA_RETURN_IF_ERROR(MakeDirs(tmp));
  RemoveTreeUnlessKept guard(tmp);  // nothing half-written survives

  ConvertStats stats;
  json weight_map = json::object();
  uint64_t done = 0;
  for (size_t fi = 0; fi < files.size(); ++fi) {
    const std::string name =
        files.size() == 1 ? std::string("model.safetensors")
                          : absl::StrFormat("model-%05d-of-%05d.safetensors",
                                            fi + 1, files.size());
    SafetensorsWriter w;
    w.SetMetadata({{"format", "pt"}});
    for (const Planned& pl : files[fi]) {
      weight_map[pl.t->hf_name] = name;
      const std::vector<Use>* u = &uses.at(pl.t->hf_name);
      const int64_t row_bytes =
          static_cast<int64_t>(pl.bytes) /
          std::max<int64_t>(pl.t->shape.empty() ? 1 : pl.t->shape[0], 1);
      const uint64_t nbytes = pl.bytes;
      GEMMA_RETURN_IF_ERROR(w.Add(
          pl.t->hf_name, pl.dtype, pl.t->shape,
          [&, u, row_bytes, nbytes](uint8_t* dst) {
            for (const Use& use : *u) {
              const int64_t n = use.rows.row_end - use.rows.row_begin;
              ShardLayout rows;
              rows.ranges = {{use.our_row, use.our_row + n}};
              Prefetch(globals.at(use.param->name), rows);
              GEMMA_RETURN_IF_ERROR(CopyRows(
                  globals.at(use.param->name), {{use.our_row, use.our_row + n}},
                  dst + use.rows.row_begin * row_bytes));
            }
            done += nbytes;
            stats.bytes = done;
            if (options.progress) options.progress(done, total);
            return absl::OkStatus();
          }));
    }
    GEMMA_RETURN_IF_ERROR(w.Write(tmp + "/" + name));
    stats.tensors += static_cast<int64_t>(files[fi].size());
    ++stats.files;
  }
  auto write_text = [&](const std::string& name,
                        const std::string& text) -> absl::Status {
    const std::string path = tmp + "/" + name;
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out << text;
      out.flush();
      if (!out)
        return absl::InternalError(absl::StrCat(path, ": write failed"));
    }
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
    return absl::OkStatus();
  };
  GEMMA_RETURN_IF_ERROR(write_text("config.json", config_out));
  if (files.size() > 1) {
    json index = {{"metadata", {{"total_size", total}}},
                  {"weight_map", weight_map}};
    GEMMA_RETURN_IF_ERROR(
        write_text("model.safetensors.index.json", index.dump(2)));
  }
  GEMMA_RETURN_IF_ERROR(CopyCompanionFiles(ckpt_dir, tmp));
  SyncDir(tmp);
  GEMMA_RETURN_IF_ERROR(PublishDir(tmp, out_dir, options.overwrite));
  guard.Keep();
  stats.seconds = Since(t0);
  return stats;
}

}  // namespace gemma
