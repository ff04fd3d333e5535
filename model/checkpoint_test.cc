#include "model/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "nlohmann/json.hpp"
#include "tests/formats/test_util.h"

namespace gemma {
namespace {

namespace fs = std::filesystem;
using ::gemma::testing::ReadFile;
using ::gemma::testing::TempDir;
using ::gemma::testing::WriteFile;
using ::testing::HasSubstr;

// Global tensors held in memory, filled with random bytes.
class MemSource : public GlobalTensorSource {
 public:
  void Add(const std::string& name, DType dtype, std::vector<int64_t> shape) {
    int64_t n = static_cast<int64_t>(DTypeSize(dtype));
    for (int64_t d : shape) n *= d;
    std::vector<uint8_t> bytes(n);
    for (auto& b : bytes) b = static_cast<uint8_t>(rng_());
    entries_.push_back({name, dtype, shape});
    data_[name] = std::move(bytes);
  }
  const std::vector<Entry>& entries() const override { return entries_; }
  const std::string& config_json() const override { return config_; }
  absl::StatusOr<VirtualTensor> Global(const std::string& name) override {
    for (const Entry& e : entries_) {
      if (e.name == name)
        return VirtualTensor::Contiguous(data_.at(name).data(), e.shape,
                                         DTypeSize(e.dtype));
    }
    return absl::NotFoundError(name);
  }
  std::vector<uint8_t> Expected(const std::string& name, int tp, int rank,
                                const ShardDims& dims) {
    const Entry* e = nullptr;
    for (const Entry& x : entries_) {
      if (x.name == name) e = &x;
    }
    auto spec = LookupParam(name);
    auto l = ComputeShard(*spec, e->shape, dims, tp, rank);
    std::vector<uint8_t> out(ShardBytes(*l, DTypeSize(e->dtype)));
    auto v = *Global(name);
    EXPECT_TRUE(CopyShard(v, *l, out.data()).ok());
    return out;
  }

 private:
  std::mt19937 rng_{42};
  std::vector<Entry> entries_;
  std::map<std::string, std::vector<uint8_t>> data_;
  std::string config_ = R"({"model_type": "gemma3_text", "hidden_size": 8})";
};

// nkv = 4 KV heads of hd = 2, nq = 8: qkv rows = (8 + 8) * 2 = 32.
MemSource Source() {
  MemSource s;
  s.Add("text.embed.weight", DType::kBF16, {11, 8});
  s.Add("text.layers.0.attn.qkv.weight", DType::kBF16, {32, 8});
  s.Add("text.layers.0.attn.o.weight", DType::kBF16, {8, 16});
  s.Add("text.layers.0.mlp.gate_up.weight", DType::kF32, {24, 8});
  s.Add("text.layers.0.mlp.down.weight", DType::kF32, {8, 12});
  s.Add("text.layers.0.input_norm.weight", DType::kF32, {8});
  s.Add("vision.layers.0.attn.qkv.bias", DType::kF16, {12});
  return s;
}

WriteCheckpointOptions Options(int tp) {
  WriteCheckpointOptions o;
  o.tp = tp;
  o.step = 1234;
  o.dims.num_kv_heads = 4;
  return o;
}

TEST(CheckpointTest, WritesManifestAndRankFilesAtomically) {
  TempDir tmp;
  MemSource src = Source();
  const std::string dir = tmp / "step-1234";
  ASSERT_TRUE(WriteCheckpoint(dir, src, Options(2)).ok());
  EXPECT_FALSE(fs::exists(dir + ".tmp"));
  EXPECT_TRUE(fs::exists(dir + "/rank-00000.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/rank-00001.safetensors"));
  auto m = nlohmann::json::parse(ReadFile(dir + "/manifest.json"));
  EXPECT_EQ(m["step"], 1234);
  EXPECT_EQ(m["parallel"]["tp"], 2);
  EXPECT_EQ(m["model_config"]["model_type"], "gemma3_text");
  ASSERT_EQ(m["tensors"].size(), 7u);
  for (const auto& t : m["tensors"]) {
    if (t["name"] == "text.embed.weight") {
      EXPECT_EQ(t["shape"], nlohmann::json({11, 8}));
      EXPECT_EQ(t["dtype"], "BF16");
      EXPECT_EQ(t["shards"][1]["ranges"], nlohmann::json({{6, 12}}));
      EXPECT_EQ(t["shards"][1]["padded_rows"], 1);
    }
    if (t["name"] == "text.layers.0.mlp.gate_up.weight") {
      EXPECT_EQ(t["shards"][1]["ranges"], nlohmann::json({{6, 12}, {18, 24}}));
    }
  }
  ASSERT_EQ(m["files"].size(), 2u);
  for (const auto& f : m["files"]) {
    const std::string raw = ReadFile(dir + "/" + f["file"].get<std::string>());
    EXPECT_EQ(f["bytes"], raw.size());
    char want[16];
    std::snprintf(
        want, sizeof(want), "%08x",
        Crc32c({reinterpret_cast<const uint8_t*>(raw.data()), raw.size()}));
    EXPECT_EQ(f["crc32c"], want);
  }
  // Existing folders are not clobbered unless asked.
  EXPECT_TRUE(absl::IsAlreadyExists(WriteCheckpoint(dir, src, Options(2))));
  auto o = Options(1);
  o.overwrite = true;
  ASSERT_TRUE(WriteCheckpoint(dir, src, o).ok());
  EXPECT_FALSE(fs::exists(dir + "/rank-00001.safetensors"));
}

TEST(CheckpointTest, LoadsAnyTpLayoutBitExactly) {
  TempDir tmp;
  MemSource src = Source();
  ASSERT_TRUE(WriteCheckpoint(tmp / "c", src, Options(2)).ok());
  auto reader = CheckpointReader::Open(tmp / "c");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->manifest().step, 1234);
  for (const auto& e : src.entries()) {
    for (int tp : {1, 2, 4}) {
      for (int r = 0; r < tp; ++r) {
        auto l = (*reader)->Layout(e.name, tp, r);
        ASSERT_TRUE(l.ok()) << l.status();
        std::vector<uint8_t> got(ShardBytes(*l, DTypeSize(e.dtype)), 0xAB);
        ASSERT_TRUE((*reader)->ReadShard(e.name, tp, r, got.data()).ok())
            << e.name;
        EXPECT_EQ(got, src.Expected(e.name, tp, r, {4}))
            << e.name << " tp " << tp << " rank " << r;
      }
    }
  }
}

TEST(CheckpointTest, ReadsOnlyTheRankFilesItNeeds) {
  TempDir tmp;
  MemSource src = Source();
  ASSERT_TRUE(WriteCheckpoint(tmp / "c", src, Options(2)).ok());
  fs::remove(tmp / "c/rank-00001.safetensors");
  auto reader = CheckpointReader::Open(tmp / "c");
  ASSERT_TRUE(reader.ok());
  const std::string qkv = "text.layers.0.attn.qkv.weight";
  // TP=4 ranks 0 and 1 lie inside stored rank 0's rows.
  for (int r = 0; r < 2; ++r) {
    std::vector<uint8_t> got(8 * 8 * 2);
    ASSERT_TRUE((*reader)->ReadShard(qkv, 4, r, got.data()).ok());
    EXPECT_EQ(got, src.Expected(qkv, 4, r, {4}));
  }
  std::vector<uint8_t> got(8 * 8 * 2);
  absl::Status s = (*reader)->ReadShard(qkv, 4, 3, got.data());
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("rank-00001.safetensors"));
}

TEST(CheckpointTest, ChecksumMismatchIsDetectedUnlessSkipped) {
  TempDir tmp;
  MemSource src = Source();
  ASSERT_TRUE(WriteCheckpoint(tmp / "c", src, Options(1)).ok());
  const std::string path = tmp / "c/rank-00000.safetensors";
  std::string raw = ReadFile(path);
  raw[raw.size() - 3] ^= 0x40;  // a data byte: the file still parses
  WriteFile(path, raw);
  const std::string name = "text.layers.0.input_norm.weight";
  std::vector<uint8_t> got(32);
  auto checked = CheckpointReader::Open(tmp / "c");
  ASSERT_TRUE(checked.ok());
  absl::Status s = (*checked)->ReadShard(name, 1, 0, got.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(path));
  EXPECT_THAT(std::string(s.message()), HasSubstr("checksum mismatch"));
  auto unchecked =
      CheckpointReader::Open(tmp / "c", /*verify_checksums=*/false);
  EXPECT_TRUE((*unchecked)->ReadShard(name, 1, 0, got.data()).ok());
}

TEST(CheckpointTest, RefusesNamesOutsideTheTableAndBadManifests) {
  TempDir tmp;
  MemSource src = Source();
  src.Add("text.layers.0.attn.mystery.weight", DType::kF32, {4});
  absl::Status s = WriteCheckpoint(tmp / "c", src, Options(2));
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("text.layers.0.attn.mystery.weight"));
  EXPECT_FALSE(fs::exists(tmp / "c"));
  EXPECT_FALSE(fs::exists(tmp / "c.tmp"));

  MemSource good = Source();
  ASSERT_TRUE(WriteCheckpoint(tmp / "d", good, Options(2)).ok());
  const std::string original = ReadFile(tmp / "d/manifest.json");
  auto m = nlohmann::json::parse(original);
  m["tensors"][1]["shards"][1]["ranges"] = {
      {0, 32}};  // would read past the shard
  WriteFile(tmp / "d/manifest.json", m.dump());
  auto steered = CheckpointReader::Open(tmp / "d");
  EXPECT_EQ(steered.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(steered.status().message()),
              HasSubstr("text.layers.0.attn.qkv.weight"));
  m = nlohmann::json::parse(original);
  m["tensors"][0].erase("shape");
  WriteFile(tmp / "d/manifest.json", m.dump());
  auto r = CheckpointReader::Open(tmp / "d");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(tmp / "d/manifest.json"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("shape"));
}

TEST(CheckpointTest, PerRankWritesCommitToTheSameFolder) {
  TempDir tmp;
  MemSource src = Source();
  ASSERT_TRUE(WriteCheckpoint(tmp / "whole", src, Options(2)).ok());
  CheckpointCommit commit;
  commit.tp = 2;
  commit.step = 1234;
  commit.dims.num_kv_heads = 4;
  commit.config_json = src.config_json();
  commit.tensors = src.entries();
  std::vector<std::vector<uint8_t>> keep;
  for (int r = 0; r < 2; ++r) {
    std::vector<RankShard> shards;
    for (const auto& e : src.entries()) {
      keep.push_back(src.Expected(e.name, 2, r, {4}));
      shards.push_back({e.name, e.dtype, e.shape, keep.back().data()});
    }
    auto f = WriteRankFile(tmp / "ranks", 2, r, {4}, shards);
    ASSERT_TRUE(f.ok()) << f.status();
    commit.files.push_back(*f);
  }
  auto missing = commit;
  missing.files.pop_back();
  EXPECT_FALSE(CommitCheckpoint(tmp / "ranks", missing).ok());
  ASSERT_TRUE(CommitCheckpoint(tmp / "ranks", commit).ok());
  EXPECT_FALSE(fs::exists(tmp / "ranks.tmp"));
  EXPECT_EQ(ReadFile(tmp / "ranks/manifest.json"),
            ReadFile(tmp / "whole/manifest.json"));
  for (const char* f : {"rank-00000.safetensors", "rank-00001.safetensors"}) {
    EXPECT_EQ(ReadFile(tmp / "ranks" + "/" + f),
              ReadFile(tmp / "whole" + "/" + f))
        << f;
  }
}

// Expert tensors split over EP ranks, replicated ones stored once (rank 0):
// two "ranks" write their own files, read back at ep 1 and ep 4.
TEST(CheckpointTest, EpRanksWriteExpertSlicesAndReplicasOnce) {
  TempDir tmp;
  MemSource src;
  src.Add("text.layers.0.moe.experts.gate_up", DType::kBF16, {4, 6, 8});
  src.Add("text.layers.0.moe.experts.down", DType::kF32, {4, 8, 3});
  src.Add("text.layers.0.moe.router.proj.weight", DType::kF32, {4, 8});
  src.Add("text.final_norm.weight", DType::kF32, {8});
  const CheckpointLayout ep2{1, 2};
  CheckpointCommit commit;
  commit.ep = 2;
  commit.dims.num_kv_heads = 1;
  commit.config_json = src.config_json();
  commit.tensors = src.entries();
  std::vector<std::vector<uint8_t>> keep;
  for (int r = 0; r < 2; ++r) {
    std::vector<RankShard> shards;
    for (const auto& e : src.entries()) {
      auto spec = LookupParam(e.name);
      ASSERT_TRUE(spec.ok());
      if (!StoresShard(*spec, ep2, r)) continue;
      auto l = ComputeLayoutShard(*spec, e.shape, {1}, ep2, r);
      ASSERT_TRUE(l.ok()) << l.status();
      keep.emplace_back(ShardBytes(*l, DTypeSize(e.dtype)));
      ASSERT_TRUE(CopyShard(*src.Global(e.name), *l, keep.back().data()).ok());
      shards.push_back({e.name, e.dtype, e.shape, keep.back().data()});
    }
    EXPECT_EQ(shards.size(), r == 0 ? 4u : 2u);
    auto f = WriteRankFile(tmp / "ck", ep2, r, {1}, shards);
    ASSERT_TRUE(f.ok()) << f.status();
    commit.files.push_back(*f);
  }
  ASSERT_TRUE(CommitCheckpoint(tmp / "ck", commit).ok());
  auto m = nlohmann::json::parse(ReadFile(tmp / "ck/manifest.json"));
  EXPECT_EQ(m["parallel"]["ep"], 2);
  // The same folder WriteCheckpoint writes at ep 2.
  WriteCheckpointOptions o;
  o.ep = 2;
  o.dims.num_kv_heads = 1;
  ASSERT_TRUE(WriteCheckpoint(tmp / "whole", src, o).ok());
  EXPECT_EQ(ReadFile(tmp / "ck/manifest.json"),
            ReadFile(tmp / "whole/manifest.json"));
  auto r = CheckpointReader::Open(tmp / "ck");
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& e : src.entries()) {
    std::vector<uint8_t> whole = src.Expected(e.name, 1, 0, {1});
    std::vector<uint8_t> got(whole.size());
    ASSERT_TRUE(
        (*r)->ReadShard(e.name, CheckpointLayout{1, 1}, 0, got.data()).ok());
    EXPECT_EQ(got, whole) << e.name;
    for (int rank = 0; rank < 4; ++rank) {  // ep 4: one expert each
      auto l = (*r)->Layout(e.name, CheckpointLayout{1, 4}, rank);
      ASSERT_TRUE(l.ok()) << l.status();
      std::vector<uint8_t> want(ShardBytes(*l, DTypeSize(e.dtype)));
      ASSERT_TRUE(CopyShard(*src.Global(e.name), *l, want.data()).ok());
      std::vector<uint8_t> have(want.size());
      ASSERT_TRUE(
          (*r)->ReadShard(e.name, CheckpointLayout{1, 4}, rank, have.data())
              .ok());
      EXPECT_EQ(have, want) << e.name << " rank " << rank;
    }
  }
  // A manifest without "ep" (older writers) reads as ep 1.
  MemSource g3 = Source();
  ASSERT_TRUE(WriteCheckpoint(tmp / "old", g3, Options(2)).ok());
  auto old = nlohmann::json::parse(ReadFile(tmp / "old/manifest.json"));
  old["parallel"].erase("ep");
  WriteFile(tmp / "old/manifest.json", old.dump());
  auto ro = CheckpointReader::Open(tmp / "old");
  ASSERT_TRUE(ro.ok()) << ro.status();
  EXPECT_EQ((*ro)->manifest().ep, 1);
  EXPECT_TRUE((*ro)->Global("text.embed.weight").ok());
}

}  // namespace
}  // namespace gemma
