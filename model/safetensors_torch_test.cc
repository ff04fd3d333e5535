#include "model/safetensors_torch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "tests/formats/test_util.h"

namespace gemma {
namespace {

using ::gemma::testing::TempDir;

TEST(SafetensorsTorchTest, ViewsAreZeroCopyAndOutliveTheFileHandle) {
  TempDir tmp;
  torch::manual_seed(0);
  std::vector<std::pair<std::string, torch::Tensor>> want = {
      {"bf16", torch::randn({3, 4}).to(torch::kBFloat16)},
      {"f16", torch::randn({5}).to(torch::kFloat16)},
      {"f32", torch::randn({2, 2, 3})},
      {"i64", torch::arange(7, torch::kInt64)},
      {"i32", torch::arange(6, torch::kInt32).reshape({2, 3})},
      {"u8", torch::arange(4, torch::kUInt8)},
      {"bool", torch::tensor({true, false})},
      {"empty", torch::zeros({0, 3})},
  };
  SafetensorsWriter w;
  for (auto& [name, t] : want) ASSERT_TRUE(AddTensor(w, name, t).ok()) << name;
  ASSERT_TRUE(w.Write(tmp / "t.safetensors").ok());
  std::vector<torch::Tensor> views;
  {
    auto file = SafetensorsFile::Open(tmp / "t.safetensors");
    ASSERT_TRUE(file.ok());
    for (auto& [name, t] : want) {
      auto v = TensorView(*file, name);
      ASSERT_TRUE(v.ok()) << v.status();
      const TensorInfo* info = (*file)->Find(name);
      if (info->nbytes() > 0)
        EXPECT_EQ(v->data_ptr(), (*file)->Bytes(*info).data())
            << "copied: " << name;
      views.push_back(*v);
    }
    EXPECT_FALSE(TensorView(*file, "missing").ok());
  }  // the handle is gone; the views keep the mapping alive
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(views[i].scalar_type(), want[i].second.scalar_type())
        << want[i].first;
    EXPECT_TRUE(torch::equal(views[i], want[i].second)) << want[i].first;
  }
  EXPECT_FALSE(AddTensor(w, "strided", torch::randn({4, 4}).t()).ok());
}

// The global tensor as torch sees it, sliced by hand per MODEL_NAMES.md.
TEST(SafetensorsTorchTest, ReadShardTensorMatchesTorchSlicing) {
  TempDir tmp;
  torch::manual_seed(1);
  const int64_t nkv = 2, hd = 2, nq = 4, H = 6, I = 8, V = 9;
  std::map<std::string, torch::Tensor> global = {
      {"text.layers.0.attn.qkv.weight", torch::randn({(nq + 2 * nkv) * hd, H})},
      {"text.layers.0.mlp.gate_up.weight",
       torch::randn({2 * I, H}).to(torch::kBFloat16)},
      {"text.layers.0.mlp.down.weight", torch::randn({H, I})},
      {"text.embed.weight", torch::randn({V, H})},
  };
  std::vector<RankShard> shards;
  for (auto& [name, t] : global) {
    shards.push_back({name, *FromScalarType(t.scalar_type()),
                      std::vector<int64_t>(t.sizes().begin(), t.sizes().end()),
                      static_cast<const uint8_t*>(t.data_ptr())});
  }
  auto f = WriteRankFile(tmp / "c", 1, 0, {nkv}, shards);
  ASSERT_TRUE(f.ok()) << f.status();
  CheckpointCommit commit;
  commit.dims.num_kv_heads = nkv;
  commit.config_json = "{}";
  for (const auto& s : shards)
    commit.tensors.push_back({s.name, s.dtype, s.global_shape});
  commit.files = {*f};
  ASSERT_TRUE(CommitCheckpoint(tmp / "c", commit).ok());
  auto reader = CheckpointReader::Open(tmp / "c");
  ASSERT_TRUE(reader.ok());
  for (int r = 0; r < 2; ++r) {
    auto qkv = ReadShardTensor(**reader, "text.layers.0.attn.qkv.weight", 2, r);
    ASSERT_TRUE(qkv.ok()) << qkv.status();
    EXPECT_TRUE(torch::equal(
        *qkv, global["text.layers.0.attn.qkv.weight"].chunk(2, 0)[r]));
    auto gu =
        ReadShardTensor(**reader, "text.layers.0.mlp.gate_up.weight", 2, r);
    auto g = global["text.layers.0.mlp.gate_up.weight"].chunk(2, 0);
    EXPECT_TRUE(torch::equal(
        *gu, torch::cat({g[0].chunk(2, 0)[r], g[1].chunk(2, 0)[r]})));
    auto down =
        ReadShardTensor(**reader, "text.layers.0.mlp.down.weight", 2, r);
    EXPECT_TRUE(torch::equal(
        *down, global["text.layers.0.mlp.down.weight"].chunk(2, 1)[r]));
    auto emb = ReadShardTensor(**reader, "text.embed.weight", 2, r);
    auto padded =
        torch::cat({global["text.embed.weight"], torch::zeros({1, H})});
    EXPECT_TRUE(torch::equal(*emb, padded.chunk(2, 0)[r]));
  }
  EXPECT_FALSE(
      ReadShardTensor(**reader, "text.layers.0.attn.qkv.weight", 4, 0).ok());
}

}  // namespace
}  // namespace gemma
