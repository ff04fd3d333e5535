#include "model/safetensors_torch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

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
      if (info->nbytes() > 0) EXPECT_EQ(v->data_ptr(), (*file)->Bytes(*info).data()) << "copied: " << name;
      views.push_back(*v);
    }
    EXPECT_FALSE(TensorView(*file, "missing").ok());
  }  // the handle is gone; the views keep the mapping alive
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(views[i].scalar_type(), want[i].second.scalar_type()) << want[i].first;
    EXPECT_TRUE(torch::equal(views[i], want[i].second)) << want[i].first;
  }
  EXPECT_FALSE(AddTensor(w, "strided", torch::randn({4, 4}).t()).ok());
}

}  // namespace
}  // namespace gemma
