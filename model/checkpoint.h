// Our sharded checkpoint folder (/work/shared/DESIGN.md §4):
//
//   DIR/manifest.json            model config, layout {tp, ep}, step, the
//                                split dims ("shard_dims"), every tensor's
//                                dtype, global shape and its stored shards
//                                (rank + slice), per-file size and CRC-32C
//   DIR/rank-00000.safetensors   rank 0's shards, under our names
//   DIR/rank-00001.safetensors   ...   (max(tp, ep) files)
//
// Layout {tp, ep} (model/param_table.h CheckpointLayout, MoE parallel
// folding): file rank r holds TP shard r % tp of the dense tensors (split by
// their rule) and EP shard r % ep of the MoE expert tensors
// (SplitKind::kExperts, dim 0). Each TP shard and expert slice is stored
// once: dense tensors by the ranks below tp, experts by the ranks below ep
// (StoresShard).
// "ep" absent in a manifest means 1; with ep = 1 the format is the Gemma 3
// one, unchanged; Gemma 4 checkpoints at tp 1 (written before Gemma 4 TP)
// read as before. A Gemma 4 checkpoint's split dims are taken from its
// model_config when read (Gemma4ShardDims), not from "shard_dims".
//
// Written into `DIR.tmp` and renamed to DIR when complete, so DIR either holds
// a whole checkpoint or does not exist. Reading maps the rank files and
// touches only the bytes a caller asks for, so loading at a different TP size
// reads just the slices each new rank needs. All copies are bit-exact.
#ifndef GEMMA_MODEL_CHECKPOINT_H_
#define GEMMA_MODEL_CHECKPOINT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "model/param_table.h"
#include "model/safetensors.h"

namespace gemma {

// Called with (bytes done, bytes total) as data is written. May be empty.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

// A set of global tensors, each readable as a VirtualTensor (pointers into
// mappings that the source keeps alive).
class GlobalTensorSource {
 public:
  struct Entry {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
  };
  virtual ~GlobalTensorSource() = default;
  virtual const std::vector<Entry>& entries() const = 0;
  // The model's HF config.json text (copied into the manifest).
  virtual const std::string& config_json() const = 0;
  virtual absl::StatusOr<VirtualTensor> Global(const std::string& name) = 0;
};

struct ManifestTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;       // global
  std::vector<ShardLayout> shards;  // the stored shards (see StoresShard)
  std::vector<int> shard_ranks;     // shard_ranks[k]: the rank whose file
                                    // holds shards[k]
};

struct ManifestFile {
  int rank = 0;
  std::string file;  // relative to the checkpoint folder
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};

struct CheckpointManifest {
  int tp = 1;
  int ep = 1;
  int64_t step = 0;
  ShardDims dims;
  std::string config_json;  // HF config.json text
  std::vector<ManifestTensor> tensors;
  std::vector<ManifestFile> files;  // one per rank (layout().world())

  CheckpointLayout layout() const { return {tp, ep}; }
  const ManifestTensor* Find(const std::string& name) const;
  std::string ToJson() const;
  // INVALID_ARGUMENT naming `file` and the field on malformed input.
  static absl::StatusOr<CheckpointManifest> FromJson(const std::string& text,
                                                     const std::string& file);
};

struct WriteCheckpointOptions {
  int tp = 1;
  int ep = 1;  // expert-parallel size (must divide every expert count)
  int64_t step = 0;
  ShardDims dims;          // the text qkv / qk split (param_table.h)
  bool overwrite = false;  // replace an existing DIR (else ALREADY_EXISTS)
  ProgressFn progress;
};

// Writes every tensor of `source` split over {tp, ep} per the parameter table.
// Names outside the table are refused (NOT_FOUND naming the tensor), tensors
// that cannot be split so (INVALID_ARGUMENT naming the tensor).
absl::Status WriteCheckpoint(const std::string& dir, GlobalTensorSource& source,
                             const WriteCheckpointOptions& options);

// Distributed save, for jobs whose ranks each hold only their own shards:
// every rank calls WriteRankFile (same `dir`, layout, `dims`), the job gathers
// the returned ManifestFile entries, and one process calls CommitCheckpoint
// after all ranks are done. The result is the same folder WriteCheckpoint
// writes. Each rank passes exactly the shards it stores (StoresShard): ranks
// below tp their dense shards, ranks below ep their expert slices (at tp = 1:
// rank 0 the dense tensors, every rank its experts).
struct RankShard {
  std::string name;  // one of ours (see param_table.h)
  DType dtype = DType::kF32;
  std::vector<int64_t> global_shape;  // the whole tensor's shape
  const uint8_t* data = nullptr;      // this rank's shard, contiguous,
                                      // ComputeLayoutShard(...).shard_shape
};

// "rank-NNNNN.safetensors": the file name of rank `rank`'s shards.
std::string RankFileName(int rank);

// Writes `DIR.tmp/rank-NNNNN.safetensors` (creating DIR.tmp if needed).
// INVALID_ARGUMENT naming the tensor for a shard this rank does not store
// in `layout` (e.g. a dense tensor passed by rank 1 of {tp 1, ep 2}).
absl::StatusOr<ManifestFile> WriteRankFile(
    const std::string& dir, const CheckpointLayout& layout, int rank,
    const ShardDims& dims, const std::vector<RankShard>& shards);
// The TP-only layout {tp, 1}.
absl::StatusOr<ManifestFile> WriteRankFile(
    const std::string& dir, int tp, int rank, const ShardDims& dims,
    const std::vector<RankShard>& shards);

struct CheckpointCommit {
  int tp = 1;
  int ep = 1;
  int64_t step = 0;
  ShardDims dims;
  std::string config_json;
  std::vector<GlobalTensorSource::Entry>
      tensors;                      // every tensor's global dtype/shape
  std::vector<ManifestFile> files;  // one per rank (max(tp, ep)), from
                                    // WriteRankFile
  bool overwrite = false;
};

// Checks that every rank file is in DIR.tmp with its recorded size, writes
// the manifest and renames DIR.tmp to DIR.
absl::Status CommitCheckpoint(const std::string& dir,
                              const CheckpointCommit& commit);

// Reads a checkpoint folder. Rank files are mapped on first use; with
// verify_checksums each file's CRC-32C is checked then (DATA_LOSS naming the
// file on mismatch), which reads that whole file once. Not thread-safe (rank
// files open lazily); VirtualTensors it returns stay valid while it lives.
class CheckpointReader : public GlobalTensorSource {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(
      const std::string& dir, bool verify_checksums = true);

  const CheckpointManifest& manifest() const { return manifest_; }
  const std::vector<Entry>& entries() const override { return entries_; }
  const std::string& config_json() const override {
    return manifest_.config_json;
  }

  // The global tensor over the rank files (zero-copy).
  absl::StatusOr<VirtualTensor> Global(const std::string& name) override;
  // The layout of `name`'s shard for rank `rank` of a `tp`-way split (any tp
  // the tensor allows, not only the stored one).
  absl::StatusOr<ShardLayout> Layout(const std::string& name, int tp,
                                     int rank) const;
  // The same for any {tp, ep} layout (e.g. a trainer's EP rank).
  absl::StatusOr<ShardLayout> Layout(const std::string& name,
                                     const CheckpointLayout& layout,
                                     int rank) const;
  // Copies that shard into `dst` (ShardBytes(layout) bytes); reads only the
  // stored slices that overlap it (opening only the rank files holding them).
  absl::Status ReadShard(const std::string& name, int tp, int rank,
                         uint8_t* dst);
  absl::Status ReadShard(const std::string& name,
                         const CheckpointLayout& layout, int rank,
                         uint8_t* dst);
  // Copies any shard `want` of `name` (e.g. ComputeLocalShard's for a TP / EP
  // rank pair) into `dst` (ShardBytes(want) bytes). INTERNAL naming the
  // tensor when the stored slices do not cover it.
  absl::Status ReadShard(const std::string& name, const ShardLayout& want,
                         uint8_t* dst);

 private:
  CheckpointReader() = default;
  absl::StatusOr<const SafetensorsFile*> RankFile(int rank);
  // Adds the stored shards of `t` to `v` (each distinct slice once, rows
  // that partly overlapping slices share once), those overlapping `want` only
  // when it is given.
  absl::Status AddStoredShards(const ManifestTensor& t, const ShardLayout* want,
                               VirtualTensor* v);

  std::string dir_;
  bool verify_ = true;
  CheckpointManifest manifest_;
  std::vector<Entry> entries_;
  std::map<int, std::shared_ptr<const SafetensorsFile>>
      files_;  // opened so far
};

// Small POSIX file helpers used by the checkpoint and conversion code. (They
// avoid std::filesystem on purpose: the LibTorch 2.11 wheel's libtorch.so
// exports its own copies of some std::filesystem functions, and
// std::filesystem::remove_all crashes in binaries linked against it.)
bool PathExists(const std::string& path);
// rm -r; OK when `path` does not exist.
absl::Status RemoveTree(const std::string& path);
// mkdir -p.
absl::Status MakeDirs(const std::string& path);
absl::Status RenamePath(const std::string& from, const std::string& to);
// fsync a folder so renames inside it are durable (best effort).
void SyncDir(const std::string& dir);
// Publishes a finished `tmp` folder as `dir`: when `dir` exists it is replaced
// if `overwrite`, else ALREADY_EXISTS.
absl::Status PublishDir(const std::string& tmp, const std::string& dir,
                        bool overwrite);

// Removes `path` (a folder being written under a temporary name) when it goes
// out of scope, unless Keep() was called once the folder was published:
// nothing half-written survives an early return.
class RemoveTreeUnlessKept {
 public:
  explicit RemoveTreeUnlessKept(std::string path) : path_(std::move(path)) {}
  ~RemoveTreeUnlessKept() {
    if (!kept_) (void)RemoveTree(path_);
  }
  RemoveTreeUnlessKept(const RemoveTreeUnlessKept&) = delete;
  RemoveTreeUnlessKept& operator=(const RemoveTreeUnlessKept&) = delete;
  void Keep() { kept_ = true; }

 private:
  std::string path_;
  bool kept_ = false;
};

}  // namespace gemma

#endif  // GEMMA_MODEL_CHECKPOINT_H_
