#include "model/param_table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>

namespace gemma {
namespace {

using ::testing::HasSubstr;

// A global 2-D tensor of int32 whose value encodes its position: 1000*r + c.
std::vector<int32_t> Global(int64_t rows, int64_t cols) {
  std::vector<int32_t> g(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      g[r * cols + c] = static_cast<int32_t>(1000 * r + c);
  return g;
}

std::vector<int32_t> Shard(const std::vector<int32_t>& g,
                           const std::vector<int64_t>& shape,
                           const ShardLayout& l) {
  VirtualTensor v = VirtualTensor::Contiguous(
      reinterpret_cast<const uint8_t*>(g.data()), shape, 4);
  std::vector<int32_t> out(ShardBytes(l, 4) / 4, -1);
  absl::Status s = CopyShard(v, l, reinterpret_cast<uint8_t*>(out.data()));
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(ParamTableTest, EveryContractNameIsInTheTable) {
  for (const char* name :
       {"text.embed.weight", "text.layers.0.attn.qkv.weight",
        "text.layers.33.mlp.gate_up.weight", "text.layers.2.attn.o.weight",
        "text.layers.2.mlp.down.weight", "text.final_norm.weight",
        "text.layers.7.attn.k_norm.weight", "vision.layers.26.attn.qkv.bias",
        "vision.patch_embed.weight", "projector.proj.weight",
        "projector.norm.weight"}) {
    EXPECT_TRUE(LookupParam(name).ok()) << name;
  }
  EXPECT_EQ(LookupParam("text.layers.3.attn.qkv.weight")->split,
            SplitKind::kRows);
  EXPECT_EQ(LookupParam("text.layers.3.attn.o.weight")->split,
            SplitKind::kCols);
  EXPECT_EQ(LookupParam("text.layers.3.mlp.gate_up.weight")->split,
            SplitKind::kRowBlocks);
  EXPECT_EQ(LookupParam("text.embed.weight")->split, SplitKind::kVocabRows);
  EXPECT_EQ(LookupParam("vision.layers.0.attn.qkv.weight")->split,
            SplitKind::kReplicated);
  auto bad = LookupParam("text.layers.x.attn.qkv.weight");
  EXPECT_TRUE(absl::IsNotFound(bad.status()));
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("text.layers.x.attn.qkv.weight"));
}

TEST(ParamTableTest, QkvSplitsByWholeKvGroups) {
  // nq=8, nkv=4, hd=2: a group is (2 q heads + k + v) * 2 = 8 rows.
  const int64_t rows = (8 + 2 * 4) * 2, cols = 3;
  auto g = Global(rows, cols);
  auto spec = *LookupParam("text.layers.0.attn.qkv.weight");
  ShardDims dims{4};
  for (int tp : {1, 2, 4}) {
    for (int r = 0; r < tp; ++r) {
      auto l = ComputeShard(spec, {rows, cols}, dims, tp, r);
      ASSERT_TRUE(l.ok()) << l.status();
      auto s = Shard(g, {rows, cols}, *l);
      const int64_t groups = 4 / tp;
      ASSERT_EQ(static_cast<int64_t>(s.size()), groups * 8 * cols);
      for (int64_t i = 0; i < groups * 8; ++i) {
        const int64_t global_row = (r * groups) * 8 + i;
        for (int64_t c = 0; c < cols; ++c)
          EXPECT_EQ(s[i * cols + c], 1000 * global_row + c);
      }
    }
  }
  auto l = ComputeShard(spec, {rows, cols}, dims, 8, 0);
  EXPECT_FALSE(l.ok());
  EXPECT_THAT(std::string(l.status().message()),
              HasSubstr("text.layers.0.attn.qkv.weight"));
  EXPECT_THAT(std::string(l.status().message()),
              HasSubstr("num_key_value_heads 4"));
}

TEST(ParamTableTest, GateUpShardIsGateSliceThenUpSlice) {
  const int64_t I = 6, H = 2;
  auto g = Global(2 * I, H);
  auto spec = *LookupParam("text.layers.1.mlp.gate_up.weight");
  for (int r = 0; r < 3; ++r) {
    auto l = ComputeShard(spec, {2 * I, H}, {}, 3, r);
    ASSERT_TRUE(l.ok());
    auto s = Shard(g, {2 * I, H}, *l);
    std::vector<int32_t> want;
    for (int64_t i = r * 2; i < r * 2 + 2; ++i)
      for (int64_t c = 0; c < H; ++c) want.push_back(1000 * i + c);
    for (int64_t i = I + r * 2; i < I + r * 2 + 2; ++i)
      for (int64_t c = 0; c < H; ++c) want.push_back(1000 * i + c);
    EXPECT_EQ(s, want) << "rank " << r;
  }
  EXPECT_FALSE(ComputeShard(spec, {2 * I, H}, {}, 4, 0).ok());
}

TEST(ParamTableTest, RowParallelSplitsColumns) {
  const int64_t H = 3, K = 8;
  auto g = Global(H, K);
  auto spec = *LookupParam("text.layers.1.attn.o.weight");
  auto l = ComputeShard(spec, {H, K}, {}, 4, 2);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->shard_shape, (std::vector<int64_t>{H, 2}));
  auto s = Shard(g, {H, K}, *l);
  EXPECT_EQ(s, (std::vector<int32_t>{4, 5, 1004, 1005, 2004, 2005}));
}

TEST(ParamTableTest, VocabSplitPadsWithZeroRows) {
  const int64_t V = 7, H = 2;
  auto g = Global(V, H);
  auto spec = *LookupParam("text.embed.weight");
  auto l = ComputeShard(spec, {V, H}, {}, 2, 1);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->padded_rows, 1);
  EXPECT_EQ(l->shard_shape, (std::vector<int64_t>{4, H}));
  auto s = Shard(g, {V, H}, *l);
  EXPECT_EQ(s,
            (std::vector<int32_t>{4000, 4001, 5000, 5001, 6000, 6001, 0, 0}));
}

// Shards of every kind assemble back to the exact global tensor, including
// into a different TP size (the resharding path).
TEST(ParamTableTest, ShardsAssembleBackExactlyAcrossTpSizes) {
  struct Case {
    const char* name;
    std::vector<int64_t> shape;
  };
  const Case cases[] = {{"text.layers.0.attn.qkv.weight", {32, 5}},
                        {"text.layers.0.mlp.gate_up.weight", {24, 5}},
                        {"text.layers.0.attn.o.weight", {5, 24}},
                        {"text.embed.weight", {13, 5}},
                        {"text.final_norm.weight", {5}},
                        {"vision.patch_embed.weight", {4, 3, 2, 2}}};
  ShardDims dims{4};
  for (const Case& c : cases) {
    const int64_t rows = c.shape[0];
    const int64_t cols = std::accumulate(c.shape.begin() + 1, c.shape.end(),
                                         int64_t{1}, std::multiplies<>());
    auto g = Global(rows, cols);
    auto spec = *LookupParam(c.name);
    for (int from_tp : {1, 2, 4}) {
      std::vector<std::vector<int32_t>> shards;
      VirtualTensor v;
      v.shape = c.shape;
      v.elem_size = 4;
      std::vector<ShardLayout> layouts;
      for (int r = 0; r < from_tp; ++r) {
        auto l = ComputeShard(spec, c.shape, dims, from_tp, r);
        ASSERT_TRUE(l.ok()) << c.name << " " << l.status();
        layouts.push_back(*l);
        shards.push_back(Shard(g, c.shape, *l));
      }
      const int used = spec.split == SplitKind::kReplicated ? 1 : from_tp;
      for (int r = 0; r < used; ++r)
        v.AddShard(layouts[r],
                   reinterpret_cast<const uint8_t*>(shards[r].data()));
      std::vector<int32_t> back(g.size(), -1);
      ShardLayout whole;
      whole.ranges = {{0, rows}};
      ASSERT_TRUE(
          CopyShard(v, whole, reinterpret_cast<uint8_t*>(back.data())).ok());
      EXPECT_EQ(back, g) << c.name << " tp " << from_tp;
      for (int to_tp : {1, 2, 4}) {
        for (int r = 0; r < to_tp; ++r) {
          auto l = ComputeShard(spec, c.shape, dims, to_tp, r);
          std::vector<int32_t> got(ShardBytes(*l, 4) / 4, -1);
          ASSERT_TRUE(
              CopyShard(v, *l, reinterpret_cast<uint8_t*>(got.data())).ok());
          EXPECT_EQ(got, Shard(g, c.shape, *l))
              << c.name << " " << from_tp << "->" << to_tp;
        }
      }
    }
  }
}

TEST(ParamTableTest, CopyShardReportsMissingPieces) {
  VirtualTensor v;
  v.shape = {4, 2};
  v.elem_size = 4;
  std::vector<int32_t> half(4, 1);
  v.AddRows(0, 2, reinterpret_cast<const uint8_t*>(half.data()));
  std::vector<int32_t> out(8);
  ShardLayout all;
  all.ranges = {{0, 4}};
  EXPECT_FALSE(CopyShard(v, all, reinterpret_cast<uint8_t*>(out.data())).ok());
}

}  // namespace
}  // namespace gemma
