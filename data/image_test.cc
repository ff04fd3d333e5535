#include "data/image.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "data/test_util.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;
using testing_util::MakeTempDir;

RgbImage Noise(int h, int w, uint32_t seed) {
  RgbImage img{h, w, std::vector<uint8_t>(static_cast<size_t>(h) * w * 3)};
  uint32_t s = seed;
  for (auto& p : img.pixels) {
    s = s * 1664525u + 1013904223u;
    p = static_cast<uint8_t>(s >> 24);
  }
  return img;
}

TEST(ImageTest, ResizeToSameSizeIsIdentity) {
  const RgbImage img = Noise(37, 53, 1);
  EXPECT_EQ(ResizeBilinearAntialiased(img, 37, 53).pixels, img.pixels);
}

TEST(ImageTest, ConstantImageStaysConstantAndNormalises) {
  RgbImage img{41, 29, std::vector<uint8_t>(41 * 29 * 3)};
  for (size_t i = 0; i < img.pixels.size(); i += 3) {
    img.pixels[i] = 0;
    img.pixels[i + 1] = 51;
    img.pixels[i + 2] = 255;
  }
  ImageOptions o;
  o.image_size = 64;
  const at::Tensor t = ImageToTensor(img, o);
  ASSERT_EQ(t.sizes(), (std::vector<int64_t>{3, 64, 64}));
  EXPECT_TRUE(torch::all(t[0] == -1.0f).item<bool>());
  EXPECT_NEAR(t[1].min().item<float>(), 51.0f / 127.5f - 1.0f, 1e-6);
  EXPECT_NEAR(t[1].max().item<float>(), 51.0f / 127.5f - 1.0f, 1e-6);
  EXPECT_TRUE(torch::all(t[2] == 1.0f).item<bool>());
}

TEST(ImageTest, MissingFileNamesThePath) {
  const auto r = DecodeImageFile("/nonexistent/dir/receipt_7.png");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(),
              HasSubstr("/nonexistent/dir/receipt_7.png"));
}

TEST(ImageTest, CorruptFileNamesThePath) {
  const std::string dir = MakeTempDir("image");
  const std::string path = dir + "/broken.png";
  // A PNG signature followed by garbage.
  testing_util::WriteFile(
      path, std::string("\x89PNG\r\n\x1a\n", 8) + std::string(100, 'x'));
  const auto r = DecodeImageFile(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr(path));
  const auto t = LoadImageTensor(dir + "/empty.jpg", ImageOptions{});
  EXPECT_FALSE(t.ok());
}

TEST(ImageTest, PanAndScanCropCounts) {
  ImageOptions o;
  o.do_pan_and_scan = true;
  // 1200x300: ratio 4 -> 4 crops of 300x300.
  auto crops = PanAndScanCrops(Noise(300, 1200, 2), o);
  ASSERT_EQ(crops.size(), 4u);
  EXPECT_EQ(crops[3].width, 300);
  // Not elongated enough.
  EXPECT_TRUE(PanAndScanCrops(Noise(380, 400, 3), o).empty());
  // Elongated but the crops would be under 256 px.
  EXPECT_TRUE(PanAndScanCrops(Noise(200, 800, 4), o).empty());
  // Portrait 300x901: 3 crops of 301 rows; the last is clipped to 299.
  crops = PanAndScanCrops(Noise(901, 300, 5), o);
  ASSERT_EQ(crops.size(), 3u);
  EXPECT_EQ(crops[0].height, 301);
  EXPECT_EQ(crops[2].height, 299);
  // Max crops caps the count.
  o.pan_and_scan_max_num_crops = 2;
  EXPECT_EQ(PanAndScanCrops(Noise(300, 1200, 2), o).size(), 2u);
  o.do_pan_and_scan = false;
  EXPECT_EQ(PreprocessImage(Noise(300, 1200, 2), o).size(0), 1);
}

// The Hugging Face reference: tests/data_parity/image_reference.py writes the
// images and the processor's pixel_values; ours must match.
TEST(ImageParityTest, MatchesHuggingFaceGemma3ImageProcessor) {
  const std::string dir = MakeTempDir("image_parity");
  ASSERT_EQ(testing_util::RunParityScript("image_reference.py", dir), 0);
  const nlohmann::json manifest = nlohmann::json::parse(
      testing_util::ReadFileOrDie(dir + "/manifest.json"));
  ASSERT_GE(manifest.size(), 10u);
  double worst_hf = 0, worst_tv = 0, worst_tv_backend = 0;
  for (const auto& m : manifest) {
    const std::string file = m["file"];
    SCOPED_TRACE(file);
    ImageOptions o;
    o.image_size = m["image_size"];
    o.do_pan_and_scan = m["pan_and_scan"];
    const auto decoded = DecodeImageFile(dir + "/" + file);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    // EXIF orientation and mode conversion: same decoded size as PIL's.
    EXPECT_EQ(decoded->height, m["decoded_size"][0].get<int>());
    EXPECT_EQ(decoded->width, m["decoded_size"][1].get<int>());
    const auto start = std::chrono::steady_clock::now();
    const at::Tensor ours = PreprocessImage(*decoded, o);
    ImageOptions tv = o;
    tv.backend = ImageOptions::Backend::kTorchvision;
    const at::Tensor ours_tv = PreprocessImage(*decoded, tv);
    const double ours_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    if (o.image_size == 896) {
      std::printf("%-18s %4dx%-4d -> 896: ours %.1f ms, HF %.1f ms\n",
                  file.c_str(), decoded->width, decoded->height, ours_s * 1e3,
                  m["hf_seconds"].get<double>() * 1e3);
    }
    std::vector<int64_t> shape = m["shape"];
    ASSERT_EQ(ours.sizes().vec(), shape);
    EXPECT_EQ(ours.size(0) - 1, m["num_crops"].get<int>());
    for (const char* kind : {"hf", "tv"}) {
      const std::string raw =
          testing_util::ReadFileOrDie(dir + "/" + file + "." + kind + ".f32");
      ASSERT_EQ(raw.size(), static_cast<size_t>(ours.numel()) * 4);
      at::Tensor ref = torch::empty_like(ours);
      std::memcpy(ref.data_ptr<float>(), raw.data(), raw.size());
      const double diff = (ours - ref).abs().max().item<double>();
      if (std::string(kind) == "hf") {
        worst_hf = std::max(worst_hf, diff);
        EXPECT_EQ(diff, 0.0) << "max abs diff vs HF";
      } else {
        // The PIL path differs from the torchvision-style reference by at
        // most one uint8 level (2/255 after normalisation); our
        // kTorchvision backend reproduces that reference.
        worst_tv = std::max(worst_tv, diff);
        EXPECT_LE(diff, 2.0 / 255 + 1e-6)
            << "PIL path vs torchvision-style reference";
        const double tv_diff = (ours_tv - ref).abs().max().item<double>();
        worst_tv_backend = std::max(worst_tv_backend, tv_diff);
        EXPECT_EQ(tv_diff, 0.0)
            << "kTorchvision vs torchvision-style reference";
      }
    }
  }
  std::printf(
      "max abs diff: kPil vs HF Gemma3ImageProcessorPil %g; kPil vs "
      "torchvision-style reference %g; kTorchvision vs that reference %g\n",
      worst_hf, worst_tv, worst_tv_backend);
}

}  // namespace
}  // namespace gemma
