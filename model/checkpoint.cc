#include "model/checkpoint.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/gemma4_config.h"
#include "model/gemma4_names.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using nlohmann::json;

constexpr const char* kFormat = "gemma-checkpoint";
constexpr int kVersion = 1;

absl::Status WriteFileAtomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat(tmp, ": write failed"));
  }
  int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat(path, ": rename failed"));
  }
  return absl::OkStatus();
}

absl::Status Field(const std::string& file, const std::string& field,
                   absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", field, ": ", why));
}

// `name`'s manifest entry in `layout`: the shards its split rule gives, for
// the ranks that store them (StoresShard).
absl::StatusOr<ManifestTensor> PlanTensor(const std::string& name, DType dtype,
                                          const std::vector<int64_t>& shape,
                                          const ShardDims& dims,
                                          const CheckpointLayout& layout) {
  GEMMA_ASSIGN_OR_RETURN(ParamSpec spec, LookupParam(name));
  ManifestTensor t{name, dtype, shape, {}, {}};
  for (int r = 0; r < layout.world(); ++r) {
    if (!StoresShard(spec, layout, r)) continue;
    GEMMA_ASSIGN_OR_RETURN(ShardLayout l,
                           ComputeLayoutShard(spec, shape, dims, layout, r));
    t.shards.push_back(std::move(l));
    t.shard_ranks.push_back(r);
  }
  return t;
}

absl::Status CheckLayout(const CheckpointLayout& layout,
                         const std::string& where) {
  if (layout.tp < 1 || layout.ep < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": bad layout tp ", layout.tp, " x ep ", layout.ep));
  }
  return absl::OkStatus();
}

std::map<std::string, std::string> RankMetadata(const CheckpointLayout& layout,
                                                int rank) {
  std::map<std::string, std::string> meta = {{"format", "pt"},
                                             {"rank", std::to_string(rank)},
                                             {"tp", std::to_string(layout.tp)}};
  if (layout.ep != 1) meta["ep"] = std::to_string(layout.ep);
  return meta;
}

}  // namespace

std::string RankFileName(int rank) {
  return absl::StrFormat("rank-%05d.safetensors", rank);
}

const ManifestTensor* CheckpointManifest::Find(const std::string& name) const {
  for (const ManifestTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::string CheckpointManifest::ToJson() const {
  json root;
  root["format"] = kFormat;
  root["version"] = kVersion;
  root["step"] = step;
  root["parallel"] = {{"tp", tp}, {"ep", ep}};
  json shard_dims = {{"num_kv_heads", dims.num_kv_heads}};
  if (dims.num_heads != 0) shard_dims["num_heads"] = dims.num_heads;
  if (!dims.layer_kv_heads.empty())
    shard_dims["layer_kv_heads"] = dims.layer_kv_heads;
  root["shard_dims"] = shard_dims;
  json config = json::parse(config_json, nullptr, /*allow_exceptions=*/false);
  root["model_config"] = config.is_discarded() ? json(config_json) : config;
  json ts = json::array();
  for (const ManifestTensor& t : tensors) {
    json shards = json::array();
    for (size_t k = 0; k < t.shards.size(); ++k) {
      const ShardLayout& l = t.shards[k];
      json ranges = json::array();
      for (auto [b, e] : l.ranges) ranges.push_back({b, e});
      shards.push_back({{"rank", t.shard_ranks[k]},
                        {"dim", l.dim},
                        {"ranges", ranges},
                        {"shape", l.shard_shape},
                        {"padded_rows", l.padded_rows}});
    }
    ts.push_back({{"name", t.name},
                  {"dtype", std::string(DTypeName(t.dtype))},
                  {"shape", t.shape},
                  {"shards", shards}});
  }
  root["tensors"] = ts;
  json fs_json = json::array();
  for (const ManifestFile& f : files) {
    fs_json.push_back({{"rank", f.rank},
                       {"file", f.file},
                       {"bytes", f.bytes},
                       {"crc32c", absl::StrFormat("%08x", f.crc32c)}});
  }
  root["files"] = fs_json;
  return root.dump(1);
}

absl::StatusOr<CheckpointManifest> CheckpointManifest::FromJson(
    const std::string& text, const std::string& file) {
  CheckpointManifest m;
  try {
    json root = json::parse(text);
    if (root.value("format", "") != kFormat)
      return Field(file, "format", "not a gemma checkpoint");
    if (root.value("version", 0) != kVersion)
      return Field(file, "version", "unsupported");
    m.step = root.at("step").get<int64_t>();
    m.tp = root.at("parallel").at("tp").get<int>();
    if (m.tp < 1) return Field(file, "parallel.tp", "must be >= 1");
    m.ep = root.at("parallel").value("ep", 1);
    if (m.ep < 1) return Field(file, "parallel.ep", "must be >= 1");
    const json& dims = root.at("shard_dims");
    m.dims.num_kv_heads = dims.at("num_kv_heads").get<int64_t>();
    m.dims.num_heads = dims.value("num_heads", int64_t{0});
    if (dims.contains("layer_kv_heads"))
      m.dims.layer_kv_heads =
          dims.at("layer_kv_heads").get<std::vector<int64_t>>();
    const json& cfg = root.at("model_config");
    m.config_json = cfg.is_string() ? cfg.get<std::string>() : cfg.dump(2);
    for (const json& t : root.at("tensors")) {
      ManifestTensor mt;
      mt.name = t.at("name").get<std::string>();
      auto dtype = ParseDType(t.at("dtype").get<std::string>());
      if (!dtype.ok())
        return Field(file, "tensors." + mt.name + ".dtype",
                     dtype.status().message());
      mt.dtype = *dtype;
      mt.shape = t.at("shape").get<std::vector<int64_t>>();
      for (const json& s : t.at("shards")) {
        ShardLayout l;
        l.dim = s.at("dim").get<int>();
        for (const json& r : s.at("ranges"))
          l.ranges.push_back({r.at(0).get<int64_t>(), r.at(1).get<int64_t>()});
        l.shard_shape = s.at("shape").get<std::vector<int64_t>>();
        l.padded_rows = s.value("padded_rows", int64_t{0});
        const int rank =
            s.value("rank", static_cast<int>(mt.shard_ranks.size()));
        if (rank < 0 || rank >= m.layout().world())
          return Field(file, "tensors." + mt.name + ".shards.rank",
                       absl::StrCat("rank ", rank, " outside the layout"));
        mt.shards.push_back(std::move(l));
        mt.shard_ranks.push_back(rank);
      }
      m.tensors.push_back(std::move(mt));
    }
    for (const json& f : root.at("files")) {
      ManifestFile mf;
      mf.rank = f.at("rank").get<int>();
      mf.file = f.at("file").get<std::string>();
      mf.bytes = f.at("bytes").get<uint64_t>();
      mf.crc32c = static_cast<uint32_t>(
          std::stoul(f.at("crc32c").get<std::string>(), nullptr, 16));
      m.files.push_back(std::move(mf));
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": malformed manifest: ", e.what()));
  }
  if (static_cast<int>(m.files.size()) != m.layout().world())
    return Field(file, "files", "need one per rank (max(tp, ep))");
  return m;
}

absl::Status WriteCheckpoint(const std::string& dir, GlobalTensorSource& source,
                             const WriteCheckpointOptions& options) {
  if (PathExists(dir) && !options.overwrite) {
    return absl::AlreadyExistsError(absl::StrCat(dir, ": already exists"));
  }
  CheckpointManifest m;
  m.tp = options.tp;
  m.ep = options.ep;
  m.step = options.step;
  m.dims = options.dims;
  m.config_json = source.config_json();
  GEMMA_RETURN_IF_ERROR(CheckLayout(m.layout(), dir));
  std::vector<VirtualTensor> globals;
  uint64_t total = 0;
  for (const auto& e : source.entries()) {
    GEMMA_ASSIGN_OR_RETURN(
        ManifestTensor t,
        PlanTensor(e.name, e.dtype, e.shape, options.dims, m.layout()));
    for (const ShardLayout& l : t.shards)
      total += ShardBytes(l, DTypeSize(e.dtype));
    GEMMA_ASSIGN_OR_RETURN(VirtualTensor v, source.Global(e.name));
    globals.push_back(std::move(v));
    m.tensors.push_back(std::move(t));
  }
  const std::string tmp = dir + ".tmp";
  GEMMA_RETURN_IF_ERROR(RemoveTree(tmp));
  GEMMA_RETURN_IF_ERROR(MakeDirs(tmp));
  RemoveTreeUnlessKept guard(tmp);  // nothing half-written survives
  uint64_t done = 0;
  for (int r = 0; r < m.layout().world(); ++r) {
    SafetensorsWriter w;
    w.SetMetadata(RankMetadata(m.layout(), r));
    for (size_t i = 0; i < m.tensors.size(); ++i) {
      const ManifestTensor& t = m.tensors[i];
      auto k = std::find(t.shard_ranks.begin(), t.shard_ranks.end(), r);
      if (k == t.shard_ranks.end()) continue;  // another rank stores it
      const ShardLayout& l = t.shards[k - t.shard_ranks.begin()];
      const VirtualTensor* g = &globals[i];
      const uint64_t nbytes = ShardBytes(l, DTypeSize(t.dtype));
      GEMMA_RETURN_IF_ERROR(w.Add(
          t.name, t.dtype, l.shard_shape, [&, g, nbytes, &l = l](uint8_t* dst) {
            Prefetch(*g, l);
            GEMMA_RETURN_IF_ERROR(CopyShard(*g, l, dst));
            done += nbytes;
            if (options.progress) options.progress(done, total);
            return absl::OkStatus();
          }));
    }
    ManifestFile f{r, RankFileName(r), w.FileSize(), 0};
    GEMMA_RETURN_IF_ERROR(w.Write(tmp + "/" + f.file, &f.crc32c));
    m.files.push_back(f);
  }
  GEMMA_RETURN_IF_ERROR(WriteFileAtomic(tmp + "/manifest.json", m.ToJson()));
  SyncDir(tmp);
  GEMMA_RETURN_IF_ERROR(PublishDir(tmp, dir, options.overwrite));
  guard.Keep();
  return absl::OkStatus();
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

absl::Status RemoveTree(const std::string& path) {
  if (!PathExists(path)) return absl::OkStatus();
  auto rm = [](const char* p, const struct stat*, int, struct FTW*) {
    return ::remove(p);
  };
  if (::nftw(path.c_str(), rm, 16, FTW_DEPTH | FTW_PHYS) != 0) {
    return absl::InternalError(
        absl::StrCat(path, ": cannot remove: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status MakeDirs(const std::string& path) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    const std::string prefix = path.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::InternalError(
          absl::StrCat(prefix, ": cannot create: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::Status RenamePath(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    return absl::InternalError(absl::StrCat(from, ": cannot rename to ", to,
                                            ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

void SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

absl::Status PublishDir(const std::string& tmp, const std::string& dir,
                        bool overwrite) {
  std::string old;
  if (PathExists(dir)) {
    if (!overwrite)
      return absl::AlreadyExistsError(absl::StrCat(dir, ": already exists"));
    old = dir + ".old";
    GEMMA_RETURN_IF_ERROR(RemoveTree(old));
    GEMMA_RETURN_IF_ERROR(RenamePath(dir, old));
  }
  GEMMA_RETURN_IF_ERROR(RenamePath(tmp, dir));
  if (!old.empty()) GEMMA_RETURN_IF_ERROR(RemoveTree(old));
  const size_t slash = dir.find_last_of('/');
  SyncDir(slash == std::string::npos
              ? "."
              : (slash == 0 ? "/" : dir.substr(0, slash)));
  return absl::OkStatus();
}

absl::StatusOr<ManifestFile> WriteRankFile(
    const std::string& dir, int tp, int rank, const ShardDims& dims,
    const std::vector<RankShard>& shards) {
  return WriteRankFile(dir, CheckpointLayout{tp, 1}, rank, dims, shards);
}

absl::StatusOr<ManifestFile> WriteRankFile(
    const std::string& dir, const CheckpointLayout& layout, int rank,
    const ShardDims& dims, const std::vector<RankShard>& shards) {
  GEMMA_RETURN_IF_ERROR(CheckLayout(layout, dir));
  const std::string tmp = dir + ".tmp";
  GEMMA_RETURN_IF_ERROR(MakeDirs(tmp));
  SafetensorsWriter w;
  w.SetMetadata(RankMetadata(layout, rank));
  for (const RankShard& sh : shards) {
    GEMMA_ASSIGN_OR_RETURN(ParamSpec spec, LookupParam(sh.name));
    if (!StoresShard(spec, layout, rank)) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, ": tensor '", sh.name, "': rank ", rank, " of tp ", layout.tp,
          " x ep ", layout.ep,
          " does not store it (each shard is stored once: dense tensors by "
          "the ranks below tp, experts by those below ep)"));
    }
    GEMMA_ASSIGN_OR_RETURN(
        ShardLayout l,
        ComputeLayoutShard(spec, sh.global_shape, dims, layout, rank));
    const size_t n = static_cast<size_t>(ShardBytes(l, DTypeSize(sh.dtype)));
    GEMMA_RETURN_IF_ERROR(
        w.AddBytes(sh.name, sh.dtype, l.shard_shape, {sh.data, n}));
  }
  ManifestFile f{rank, RankFileName(rank), w.FileSize(), 0};
  GEMMA_RETURN_IF_ERROR(w.Write(tmp + "/" + f.file, &f.crc32c));
  return f;
}

absl::Status CommitCheckpoint(const std::string& dir,
                              const CheckpointCommit& c) {
  const std::string tmp = dir + ".tmp";
  CheckpointManifest m;
  m.tp = c.tp;
  m.ep = c.ep;
  m.step = c.step;
  m.dims = c.dims;
  m.config_json = c.config_json;
  GEMMA_RETURN_IF_ERROR(CheckLayout(m.layout(), dir));
  for (const auto& e : c.tensors) {
    GEMMA_ASSIGN_OR_RETURN(
        ManifestTensor t,
        PlanTensor(e.name, e.dtype, e.shape, c.dims, m.layout()));
    m.tensors.push_back(std::move(t));
  }
  for (int r = 0; r < m.layout().world(); ++r) {
    const ManifestFile* f = nullptr;
    for (const ManifestFile& x : c.files) {
      if (x.rank == r) f = &x;
    }
    if (f == nullptr)
      return absl::FailedPreconditionError(
          absl::StrCat(tmp, ": no file for rank ", r));
    struct stat st;
    const std::string path = tmp + "/" + f->file;
    if (::stat(path.c_str(), &st) != 0 ||
        static_cast<uint64_t>(st.st_size) != f->bytes) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": missing or not ", f->bytes, " bytes"));
    }
    m.files.push_back(*f);
  }
  if (PathExists(dir) && !c.overwrite)
    return absl::AlreadyExistsError(absl::StrCat(dir, ": already exists"));
  GEMMA_RETURN_IF_ERROR(WriteFileAtomic(tmp + "/manifest.json", m.ToJson()));
  SyncDir(tmp);
  return PublishDir(tmp, dir, c.overwrite);
}

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(
    const std::string& dir, bool verify_checksums) {
  const std::string path = dir + "/manifest.json";
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot open (not a checkpoint folder?)"));
  std::stringstream ss;
  ss << in.rdbuf();
  std::unique_ptr<CheckpointReader> r(new CheckpointReader());
  r->dir_ = dir;
  r->verify_ = verify_checksums;
  GEMMA_ASSIGN_OR_RETURN(r->manifest_,
                         CheckpointManifest::FromJson(ss.str(), path));
  // Gemma 4: the split follows the model config (manifests written before
  // Gemma 4 TP stored num_kv_heads 1, right at tp 1 only).
  if (IsGemma4ConfigText(r->manifest_.config_json)) {
    absl::StatusOr<Gemma4ModelConfig> config = ParseGemma4ModelConfigText(
        r->manifest_.config_json, path + ": model_config");
    if (!config.ok()) return config.status();
    r->manifest_.dims = Gemma4ShardDims(config->text);
  }
  // The stored layouts must be the ones the split rules give (they decide
  // which bytes are read, so a corrupt manifest must not steer reads).
  for (const ManifestTensor& t : r->manifest_.tensors) {
    absl::StatusOr<ManifestTensor> want = PlanTensor(
        t.name, t.dtype, t.shape, r->manifest_.dims, r->manifest_.layout());
    if (!want.ok())
      return absl::DataLossError(
          absl::StrCat(path, ": ", want.status().message()));
    if (want->shard_ranks != t.shard_ranks) {
      return absl::DataLossError(absl::StrCat(
          path, ": tensor '", t.name,
          "': its stored shards are not those of the split rule (ranks ",
          absl::StrJoin(t.shard_ranks, ","), ", expected ",
          absl::StrJoin(want->shard_ranks, ","), ")"));
    }
    for (size_t k = 0; k < t.shards.size(); ++k) {
      const ShardLayout &w = want->shards[k], &have = t.shards[k];
      if (w.dim != have.dim || w.ranges != have.ranges ||
          w.shard_shape != have.shard_shape) {
        return absl::DataLossError(
            absl::StrCat(path, ": tensor '", t.name, "': shard of rank ",
                         t.shard_ranks[k], " does not match the split rule"));
      }
    }
    r->entries_.push_back({t.name, t.dtype, t.shape});
  }
  return r;
}

absl::StatusOr<const SafetensorsFile*> CheckpointReader::RankFile(int rank) {
  auto it = files_.find(rank);
  if (it != files_.end()) return it->second.get();
  const ManifestFile* mf = nullptr;
  for (const ManifestFile& f : manifest_.files) {
    if (f.rank == rank) mf = &f;
  }
  if (mf == nullptr)
    return absl::NotFoundError(
        absl::StrCat(dir_, "/manifest.json: no file for rank ", rank));
  const std::string path = dir_ + "/" + mf->file;
  GEMMA_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  if (file->FileBytes().size() != mf->bytes) {
    return absl::DataLossError(
        absl::StrCat(path, ": ", file->FileBytes().size(),
                     " bytes, manifest says ", mf->bytes));
  }
  if (verify_) {
    uint32_t crc = Crc32c(file->FileBytes());
    if (crc != mf->crc32c) {
      return absl::DataLossError(
          absl::StrFormat("%s: checksum mismatch (crc32c %08x, manifest %08x)",
                          path, crc, mf->crc32c));
    }
  }
  const SafetensorsFile* raw = file.get();
  files_.emplace(rank, std::move(file));
  return raw;
}

absl::Status CheckpointReader::AddStoredShards(const ManifestTensor& t,
                                               const ShardLayout* want,
                                               VirtualTensor* v) {
  std::vector<const ShardLayout*> added;
  for (size_t k = 0; k < t.shards.size(); ++k) {
    const ShardLayout& have = t.shards[k];
    if (want != nullptr) {
      bool overlap = have.dim != want->dim;
      for (auto [hb, he] : have.ranges) {
        for (auto [wb, we] : want->ranges) overlap |= hb < we && wb < he;
      }
      if (!overlap) continue;
    }
    bool seen = false;  // a replica of a slice already added
    for (const ShardLayout* a : added)
      seen |= a->dim == have.dim && a->ranges == have.ranges;
    if (seen) continue;
    GEMMA_ASSIGN_OR_RETURN(const SafetensorsFile* f,
                           RankFile(t.shard_ranks[k]));
    GEMMA_ASSIGN_OR_RETURN(const TensorInfo* info, f->Get(t.name));
    if (info->dtype != t.dtype || info->shape != have.shard_shape) {
      return absl::DataLossError(
          absl::StrCat(f->path(), ": tensor '", t.name,
                       "' does not match the manifest's dtype/shape"));
    }
    v->AddShard(have, f->Bytes(*info).data());
    added.push_back(&have);
  }
  return absl::OkStatus();
}

absl::StatusOr<VirtualTensor> CheckpointReader::Global(
    const std::string& name) {
  const ManifestTensor* t = manifest_.Find(name);
  if (t == nullptr)
    return absl::NotFoundError(absl::StrCat(dir_, ": no tensor '", name, "'"));
  VirtualTensor v;
  v.shape = t->shape;
  v.elem_size = DTypeSize(t->dtype);
  GEMMA_RETURN_IF_ERROR(AddStoredShards(*t, nullptr, &v));
  return v;
}

absl::StatusOr<ShardLayout> CheckpointReader::Layout(const std::string& name,
                                                     int tp, int rank) const {
  return Layout(name, CheckpointLayout{tp, 1}, rank);
}

absl::StatusOr<ShardLayout> CheckpointReader::Layout(
    const std::string& name, const CheckpointLayout& layout, int rank) const {
  const ManifestTensor* t = manifest_.Find(name);
  if (t == nullptr)
    return absl::NotFoundError(absl::StrCat(dir_, ": no tensor '", name, "'"));
  GEMMA_ASSIGN_OR_RETURN(ParamSpec spec, LookupParam(name));
  return ComputeLayoutShard(spec, t->shape, manifest_.dims, layout, rank);
}

absl::Status CheckpointReader::ReadShard(const std::string& name, int tp,
                                         int rank, uint8_t* dst) {
  return ReadShard(name, CheckpointLayout{tp, 1}, rank, dst);
}

absl::Status CheckpointReader::ReadShard(const std::string& name,
                                         const CheckpointLayout& layout,
                                         int rank, uint8_t* dst) {
  GEMMA_ASSIGN_OR_RETURN(ShardLayout want, Layout(name, layout, rank));
  return ReadShard(name, want, dst);
}

absl::Status CheckpointReader::ReadShard(const std::string& name,
                                         const ShardLayout& want,
                                         uint8_t* dst) {
  const ManifestTensor* t = manifest_.Find(name);
  if (t == nullptr)
    return absl::NotFoundError(absl::StrCat(dir_, ": no tensor '", name, "'"));
  // Open only the stored ranks whose slices overlap the wanted ranges.
  VirtualTensor v;
  v.shape = t->shape;
  v.elem_size = DTypeSize(t->dtype);
  GEMMA_RETURN_IF_ERROR(AddStoredShards(*t, &want, &v));
  absl::Status s = CopyShard(v, want, dst);
  if (!s.ok())
    return absl::Status(
        s.code(), absl::StrCat(dir_, ": tensor '", name, "': ", s.message()));
  return absl::OkStatus();
}

}  // namespace gemma
