#include "model/param_table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>

#include "absl/strings/str_cat.h"

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

// A fused attention weight's rows as (part, head, row within head) for nq
// query heads and nkv groups of m K/V heads, hd rows each, laid out per group.
struct HeadRows {
  int64_t nq, nkv, m, hd;
  int64_t group_rows() const { return (nq / nkv + m) * hd; }
  int64_t rows() const { return nkv * group_rows(); }
  // Global row of query head q's row i, and of K/V head j (0 = k, 1 = v) of
  // group g's row i.
  int64_t q(int64_t head, int64_t i) const {
    const int64_t per = nq / nkv;
    return head / per * group_rows() + head % per * hd + i;
  }
  int64_t kv(int64_t g, int64_t j, int64_t i) const {
    return g * group_rows() + (nq / nkv + j) * hd + i;
  }
};

// The rows rank t of tp should hold under K/V replication: its nq / tp query
// heads (consecutive global heads), then its group's K (and V) rows.
std::vector<int64_t> ReplicatedRows(const HeadRows& h, int tp, int t) {
  const int64_t heads = h.nq / tp, g = t / (tp / h.nkv);
  std::vector<int64_t> rows;
  for (int64_t head = t * heads; head < (t + 1) * heads; ++head)
    for (int64_t i = 0; i < h.hd; ++i) rows.push_back(h.q(head, i));
  for (int64_t j = 0; j < h.m; ++j)
    for (int64_t i = 0; i < h.hd; ++i) rows.push_back(h.kv(g, j, i));
  return rows;
}

std::vector<int32_t> RowsOf(const std::vector<int32_t>& g, int64_t cols,
                            const std::vector<int64_t>& rows) {
  std::vector<int32_t> out;
  for (int64_t r : rows)
    for (int64_t c = 0; c < cols; ++c) out.push_back(g[r * cols + c]);
  return out;
}

TEST(ParamTableTest, FewerKvHeadsThanTpReplicatesKvAndSplitsQueryHeads) {
  const int64_t cols = 3;
  struct Case {
    const char* name;
    HeadRows h;
    int tp;
    std::vector<std::vector<std::pair<int64_t, int64_t>>> ranges;
  };
  const Case cases[] = {
      // qkv, nq 8, nkv 2, hd 2, tp 4: groups of (4 q + k + v) * 2 = 12 rows;
      // ranks 0, 1 share group 0, ranks 2, 3 group 1.
      {"text.layers.0.attn.qkv.weight",
       {8, 2, 2, 2},
       4,
       {{{0, 4}, {8, 12}},
        {{4, 8}, {8, 12}},
        {{12, 16}, {20, 24}},
        {{16, 20}, {20, 24}}}},
      // qk (K = V), nq 4, nkv 1, hd 3, tp 2: one group of (4 q + k) * 3 rows.
      {"text.layers.5.attn.qk.weight",
       {4, 1, 1, 3},
       2,
       {{{0, 6}, {12, 15}}, {{6, 12}, {12, 15}}}},
  };
  for (const Case& c : cases) {
    auto spec = LookupParam(c.name);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(spec->split, SplitKind::kRows);
    EXPECT_TRUE(spec->kv_groups);
    ShardDims dims;
    dims.num_heads = c.h.nq;
    dims.num_kv_heads = 99;  // the layer's own count wins
    dims.layer_kv_heads = std::vector<int64_t>(8, c.h.nkv);
    const std::vector<int64_t> shape = {c.h.rows(), cols};
    auto g = Global(c.h.rows(), cols);
    VirtualTensor v;
    v.shape = shape;
    v.elem_size = 4;
    std::vector<std::vector<int32_t>> shards;
    for (int t = 0; t < c.tp; ++t) {
      auto l = ComputeShard(*spec, shape, dims, c.tp, t);
      ASSERT_TRUE(l.ok()) << c.name << " " << l.status();
      EXPECT_EQ(l->dim, 0);
      EXPECT_EQ(l->ranges, c.ranges[t]) << c.name << " rank " << t;
      EXPECT_EQ(l->shard_shape,
                (std::vector<int64_t>{(c.h.nq / c.tp + c.h.m) * c.h.hd, cols}));
      shards.push_back(Shard(g, shape, *l));
      EXPECT_EQ(shards.back(), RowsOf(g, cols, ReplicatedRows(c.h, c.tp, t)))
          << c.name << " rank " << t;
    }
    // The overlapping shards (shared K/V rows) assemble back exactly.
    for (int t = 0; t < c.tp; ++t) {
      v.AddShard(*ComputeShard(*spec, shape, dims, c.tp, t),
                 reinterpret_cast<const uint8_t*>(shards[t].data()));
    }
    std::vector<int32_t> back(g.size(), -1);
    ShardLayout whole;
    whole.ranges = {{0, c.h.rows()}};
    ASSERT_TRUE(
        CopyShard(v, whole, reinterpret_cast<uint8_t*>(back.data())).ok());
    EXPECT_EQ(back, g) << c.name;
    // ... and reshard to tp 1 and to whole-group splits.
    for (int to : {1, 2}) {
      if (c.h.nkv % to != 0 && c.tp != to) continue;
      for (int t = 0; t < to; ++t) {
        auto l = ComputeShard(*spec, shape, dims, to, t);
        ASSERT_TRUE(l.ok()) << l.status();
        std::vector<int32_t> got(ShardBytes(*l, 4) / 4, -1);
        ASSERT_TRUE(
            CopyShard(v, *l, reinterpret_cast<uint8_t*>(got.data())).ok());
        EXPECT_EQ(got, Shard(g, shape, *l)) << c.name << " to tp " << to;
      }
    }
    // Without one rank's shard the rows only it holds are missing.
    VirtualTensor partial;
    partial.shape = shape;
    partial.elem_size = 4;
    for (int t = 0; t + 1 < c.tp; ++t) {
      partial.AddShard(*ComputeShard(*spec, shape, dims, c.tp, t),
                       reinterpret_cast<const uint8_t*>(shards[t].data()));
    }
    auto s = CopyShard(partial, whole, reinterpret_cast<uint8_t*>(back.data()));
    EXPECT_FALSE(s.ok()) << c.name;
    EXPECT_THAT(std::string(s.message()), HasSubstr("source pieces cover"));
  }
}

TEST(ParamTableTest, KvSplitUsesEachLayersKvHeadsAndNamesWhatCannotSplit) {
  // Layer 0: 4 KV groups (whole groups at tp 2); layer 1: 1 (replicated).
  ShardDims dims;
  dims.num_heads = 4;
  dims.num_kv_heads = 4;
  dims.layer_kv_heads = {4, 1};
  auto qkv0 = *LookupParam("text.layers.0.attn.qkv.weight");
  auto l = ComputeShard(qkv0, {(4 + 8) * 2, 5}, dims, 2, 1);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->ranges, (std::vector<std::pair<int64_t, int64_t>>{{12, 24}}));
  auto qk1 = *LookupParam("text.layers.1.attn.qk.weight");
  l = ComputeShard(qk1, {(4 + 1) * 2, 5}, dims, 2, 1);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->ranges,
            (std::vector<std::pair<int64_t, int64_t>>{{4, 8}, {8, 10}}));
  // Layers past layer_kv_heads use num_kv_heads.
  auto qkv7 = *LookupParam("text.layers.7.attn.qkv.weight");
  l = ComputeShard(qkv7, {12 * 2, 5}, dims, 4, 3);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->ranges, (std::vector<std::pair<int64_t, int64_t>>{{18, 24}}));
  EXPECT_EQ(TextLayerIndex("text.layers.12.attn.qk.weight"), 12);
  EXPECT_EQ(TextLayerIndex("text.final_norm.weight"), -1);
  EXPECT_EQ(TextLayerIndex("vision.layers.3.attn.qkv.weight"), -1);

  struct Bad {
    int64_t nq, nkv;
    int tp;
  };
  // nkv 3 at tp 2 (neither multiple); tp 4 with nq 2 (too few query heads);
  // nkv 2 at tp 3 with nq 6 (3 is no multiple of 2).
  for (const Bad& b : {Bad{6, 3, 2}, Bad{2, 1, 4}, Bad{6, 2, 3}}) {
    ShardDims d;
    d.num_heads = b.nq;
    d.num_kv_heads = b.nkv;
    const std::vector<int64_t> shape = {(b.nq + 2 * b.nkv) * 2, 5};
    auto s = ComputeShard(qkv0, shape, d, b.tp, 0);
    ASSERT_FALSE(s.ok()) << b.nq << " " << b.nkv << " " << b.tp;
    EXPECT_TRUE(absl::IsInvalidArgument(s.status()));
    const std::string msg(s.status().message());
    EXPECT_THAT(msg, HasSubstr("text.layers.0.attn.qkv.weight"));
    EXPECT_THAT(msg, HasSubstr(absl::StrCat("cannot split ", b.tp, " ways")));
    EXPECT_THAT(msg, HasSubstr(absl::StrCat("num_attention_heads ", b.nq)));
    EXPECT_THAT(msg, HasSubstr(absl::StrCat("num_key_value_heads ", b.nkv)));
  }
  // Query heads unknown (Gemma 3 manifests): only whole groups split.
  ShardDims g3{1};
  auto s = ComputeShard(qkv0, {(4 + 2) * 2, 5}, g3, 2, 0);
  EXPECT_TRUE(absl::IsInvalidArgument(s.status()));
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("num_key_value_heads 1"));
}

// MoE parallel folding: dense tensors split over tp, experts over ep, EP
// groups of ep consecutive ranks; files max(tp, ep), each shard stored once.
TEST(ParamTableTest, FoldedLayoutStoresEveryShardOnce) {
  auto dense = *LookupParam("text.layers.0.attn.o.weight");
  auto norm = *LookupParam("text.final_norm.weight");
  auto expert = *LookupParam("text.layers.0.moe.experts.down");
  struct Case {
    CheckpointLayout layout;
    int world;
  };
  for (const Case& c : {Case{{4, 8}, 8}, Case{{2, 4}, 4}, Case{{4, 2}, 4},
                        Case{{1, 4}, 4}, Case{{4, 1}, 4}, Case{{1, 1}, 1}}) {
    const CheckpointLayout& l = c.layout;
    SCOPED_TRACE(absl::StrCat("tp ", l.tp, " ep ", l.ep));
    EXPECT_EQ(l.world(), c.world);
    std::vector<int> dense_by_shard(l.tp, 0), experts_by_shard(l.ep, 0);
    int norms = 0;
    for (int r = 0; r < l.world(); ++r) {
      EXPECT_EQ(l.tp_index(r), r % l.tp);
      EXPECT_EQ(l.ep_index(r), r % l.ep);
      EXPECT_EQ(StoresShard(dense, l, r), r < l.tp) << r;
      EXPECT_EQ(StoresShard(expert, l, r), r < l.ep) << r;
      if (StoresShard(dense, l, r)) ++dense_by_shard[l.tp_index(r)];
      if (StoresShard(expert, l, r)) ++experts_by_shard[l.ep_index(r)];
      // A replicated tensor is the same shard on every TP rank: stored by
      // the ranks below tp (once at tp 1).
      norms += StoresShard(norm, l, r) ? 1 : 0;
      // File rank r holds what job rank r holds.
      auto d = ComputeLayoutShard(dense, {6, 8 * l.tp}, {}, l, r);
      ASSERT_TRUE(d.ok()) << d.status();
      EXPECT_EQ(d->ranges[0].first, 8 * (r % l.tp));
      auto e = ComputeLayoutShard(expert, {2 * l.ep, 4, 3}, {}, l, r);
      ASSERT_TRUE(e.ok()) << e.status();
      EXPECT_EQ(e->ranges, (std::vector<std::pair<int64_t, int64_t>>{
                               {2 * (r % l.ep), 2 * (r % l.ep) + 2}}));
    }
    EXPECT_EQ(dense_by_shard, std::vector<int>(l.tp, 1));
    EXPECT_EQ(experts_by_shard, std::vector<int>(l.ep, 1));
    EXPECT_EQ(norms, l.tp);
    EXPECT_FALSE(StoresShard(dense, l, l.world()));
    EXPECT_FALSE(
        ComputeLayoutShard(dense, {6, 8 * l.tp}, {}, l, l.world()).ok());
  }
  // A job rank of TP4 / EP8 beyond the files (rank 5: TP rank 1, EP rank 5)
  // and any TP / EP pair by index.
  const CheckpointLayout l{4, 8};
  auto e = ComputeLocalShard(expert, {16, 4, 3}, {}, l, 1, 5);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->ranges, (std::vector<std::pair<int64_t, int64_t>>{{10, 12}}));
  auto d = ComputeLocalShard(dense, {6, 32}, {}, l, 1, 5);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->ranges, (std::vector<std::pair<int64_t, int64_t>>{{8, 16}}));
  EXPECT_FALSE(ComputeLocalShard(dense, {6, 32}, {}, l, 4, 0).ok());
  EXPECT_FALSE(ComputeLocalShard(expert, {16, 4, 3}, {}, l, 0, 8).ok());
}

}  // namespace
}  // namespace gemma
