// The Gemma 4 image processor against transformers 5.17's
// Gemma4ImageProcessorPil (make_reference_gemma4.py writes its outputs for
// random RGB images of awkward sizes and budgets): resized patches bit for
// bit, positions, padding and soft-token counts equal.
#include "data/gemma4_image.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "model/safetensors.h"

namespace gemma {
namespace {

std::string IoPath() {
  const char* env = std::getenv("GEMMA_PARITY_DATA");
  return std::string(env != nullptr ? env : GEMMA_BINARY_DIR "/parity_data_gemma4") +
         "/gemma4_image/io.safetensors";
}

template <typename T>
std::vector<T> Read(const SafetensorsFile& f, const std::string& name) {
  auto info = f.Get(name);
  EXPECT_TRUE(info.ok()) << info.status();
  if (!info.ok()) return {};
  auto bytes = f.Bytes(**info);
  std::vector<T> out((*info)->nbytes() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), (*info)->nbytes());
  return out;
}

TEST(Gemma4ImageTest, MatchesHfProcessor) {
  auto file = SafetensorsFile::Open(IoPath());
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  int cases = 0;
  for (int i = 0; f.Find("image" + std::to_string(i)) != nullptr; ++i, ++cases) {
    SCOPED_TRACE("case " + std::to_string(i));
    const std::string n = std::to_string(i);
    const auto* info = f.Find("image" + n);
    RgbImage img;
    img.height = static_cast<int>(info->shape[0]);
    img.width = static_cast<int>(info->shape[1]);
    img.pixels = Read<uint8_t>(f, "image" + n);
    Gemma4ImageOptions o;
    o.max_soft_tokens = static_cast<int>(Read<int64_t>(f, "budget" + n)[0]);
    auto got = Gemma4PreprocessImage(img, o);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->num_soft_tokens, Read<int64_t>(f, "soft_tokens" + n)[0]);
    EXPECT_EQ(got->positions, Read<int64_t>(f, "positions" + n));
    const std::vector<float> want = Read<float>(f, "pixel_values" + n);
    ASSERT_EQ(got->pixel_values.size(), want.size());
    size_t diff = 0;
    for (size_t k = 0; k < want.size(); ++k) diff += got->pixel_values[k] != want[k];
    EXPECT_EQ(diff, 0u) << "of " << want.size() << " values differ";
  }
  EXPECT_GE(cases, 6);
}

TEST(Gemma4ImageTest, TargetSizesAndErrors) {
  Gemma4ImageOptions o;  // 280 tokens, patch 16, k 3: multiples of 48
  auto t = Gemma4ResizeTarget(768, 1024, o);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->first % 48, 0);
  EXPECT_EQ(t->second % 48, 0);
  EXPECT_LE(t->first * t->second, 280 * 9 * 256);
  EXPECT_GT(t->second, t->first);  // aspect kept
  o.max_soft_tokens = 100;
  RgbImage img{48, 48, std::vector<uint8_t>(48 * 48 * 3, 7)};
  auto bad = Gemma4PreprocessImage(img, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("max_soft_tokens"), std::string::npos);
  EXPECT_FALSE(Gemma4ResizeTarget(0, 10, Gemma4ImageOptions{}).ok());
}

}  // namespace
}  // namespace gemma
