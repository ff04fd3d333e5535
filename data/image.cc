#include "data/image.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "data/pil_resample.h"

namespace gemma {
namespace {

// PIL's conversions to 8-bit RGB for what OpenCV decoded (1 or 3 channels,
// 8 or 16 bits): gray is replicated; 16-bit gray ("I;16") is clipped at 255
// as PIL's convert("RGB") does; 16-bit colour keeps the high byte, as PIL's
// PNG reader does.
absl::StatusOr<RgbImage> FromDecoded(const cv::Mat& decoded,
                                     const std::string& name) {
  if (decoded.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot decode image ", name,
                     ": not an image format OpenCV reads, or corrupt"));
  }
  const int depth = decoded.depth(), channels = decoded.channels();
  if ((depth != CV_8U && depth != CV_16U) || (channels != 1 && channels != 3)) {
    return absl::InvalidArgumentError(
        absl::StrCat("image ", name, " has an unsupported pixel format (depth ",
                     depth, ", ", channels, " channels)"));
  }
  cv::Mat eight = decoded;
  if (depth == CV_16U) {
    eight.create(decoded.rows, decoded.cols, CV_8UC(channels));
    for (int y = 0; y < decoded.rows; ++y) {
      const uint16_t* src = decoded.ptr<uint16_t>(y);
      uint8_t* dst = eight.ptr<uint8_t>(y);
      for (int i = 0; i < decoded.cols * channels; ++i) {
        dst[i] = channels == 1
                     ? static_cast<uint8_t>(std::min<int>(src[i], 255))
                     : static_cast<uint8_t>(src[i] >> 8);
      }
    }
  }
  cv::Mat rgb;
  cv::cvtColor(eight, rgb,
               channels == 1 ? cv::COLOR_GRAY2RGB : cv::COLOR_BGR2RGB);
  RgbImage out{rgb.rows, rgb.cols, {}};
  out.pixels.resize(static_cast<size_t>(rgb.rows) * rgb.cols * 3);
  for (int y = 0; y < rgb.rows; ++y) {
    std::copy_n(rgb.ptr<uint8_t>(y), static_cast<size_t>(rgb.cols) * 3,
                &out.pixels[static_cast<size_t>(y) * rgb.cols * 3]);
  }
  return out;
}

}  // namespace

absl::StatusOr<RgbImage> DecodeImageBytes(const std::string& bytes,
                                          const std::string& name) {
  if (bytes.empty())
    return absl::InvalidArgumentError(
        absl::StrCat("image ", name, " is empty"));
  cv::Mat decoded;
  try {
    const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8UC1,
                      const_cast<char*>(bytes.data()));
    // 1 or 3 channels (alpha dropped) at 8 or 16 bits, EXIF orientation
    // applied; FromDecoded converts as PIL would.
    decoded = cv::imdecode(raw, cv::IMREAD_ANYCOLOR | cv::IMREAD_ANYDEPTH);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot decode image ", name, ": ", e.what()));
  }
  return FromDecoded(decoded, name);
}

absl::StatusOr<RgbImage> DecodeImageFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(
        absl::StrCat("image file not found or unreadable: ", path));
  std::string bytes((std::istreambuf_iterator<char>(in)),
                    std::istreambuf_iterator<char>());
  if (in.bad())
    return absl::DataLossError(absl::StrCat("error reading image file ", path));
  return DecodeImageBytes(bytes, path);
}

RgbImage ResizeBilinearAntialiased(const RgbImage& image, int out_height,
                                   int out_width) {
  return PilResize(image, out_height, out_width, kPilBilinear);
}

RgbImage Crop(const RgbImage& image, int y, int x, int h, int w) {
  const int y1 = std::clamp(y + h, 0, image.height),
            x1 = std::clamp(x + w, 0, image.width);
  y = std::clamp(y, 0, image.height);
  x = std::clamp(x, 0, image.width);
  RgbImage out{std::max(0, y1 - y), std::max(0, x1 - x), {}};
  out.pixels.resize(static_cast<size_t>(out.height) * out.width * 3);
  for (int r = 0; r < out.height; ++r) {
    std::copy_n(
        &image.pixels[(static_cast<size_t>(y + r) * image.width + x) * 3],
        static_cast<size_t>(out.width) * 3,
        &out.pixels[static_cast<size_t>(r) * out.width * 3]);
  }
  return out;
}

std::vector<RgbImage> PanAndScanCrops(const RgbImage& image,
                                      const ImageOptions& o) {
  const int height = image.height, width = image.width;
  // Crops go along the long side only.
  const bool wide = width >= height;
  const int long_side = wide ? width : height,
            short_side = wide ? height : width;
  const double ratio = static_cast<double>(long_side) / short_side;
  if (ratio < o.pan_and_scan_min_ratio_to_activate) return {};
  // The rounded aspect ratio, at most long_side / min_crop_size, clamped to
  // [2, max_num_crops].
  int n = static_cast<int>(std::floor(ratio + 0.5));
  n = std::min(static_cast<int>(std::floor(static_cast<double>(long_side) /
                                           o.pan_and_scan_min_crop_size)),
               n);
  n = std::min(o.pan_and_scan_max_num_crops, std::max(2, n));
  const int crops_w = wide ? n : 1, crops_h = wide ? 1 : n;
  const int crop_w =
      static_cast<int>(std::ceil(static_cast<double>(width) / crops_w));
  const int crop_h =
      static_cast<int>(std::ceil(static_cast<double>(height) / crops_h));
  if (std::min(crop_w, crop_h) < o.pan_and_scan_min_crop_size) return {};
  std::vector<RgbImage> crops;
  for (int i = 0; i < crops_h; ++i) {
    for (int j = 0; j < crops_w; ++j)
      crops.push_back(Crop(image, i * crop_h, j * crop_w, crop_h, crop_w));
  }
  return crops;
}

namespace {

// The torchvision backend: uint8 antialiased bilinear resize (LibTorch's
// kernel, as torchvision's resize uses for uint8 CPU tensors), then the
// fused rescale-normalise (x - 127.5) / 127.5.
at::Tensor TorchvisionStyleTensor(const RgbImage& image, int s) {
  at::Tensor hwc =
      torch::from_blob(const_cast<uint8_t*>(image.pixels.data()),
                       {image.height, image.width, 3}, torch::kUInt8);
  at::Tensor nchw = hwc.permute({2, 0, 1}).unsqueeze(0).contiguous();
  at::Tensor resized = torch::nn::functional::interpolate(
      nchw, torch::nn::functional::InterpolateFuncOptions()
                .size(std::vector<int64_t>{s, s})
                .mode(torch::kBilinear)
                .align_corners(false)
                .antialias(true));
  return (resized[0].to(torch::kFloat32) - 127.5f) / 127.5f;
}

}  // namespace

at::Tensor ImageToTensor(const RgbImage& image, const ImageOptions& options) {
  const int s = options.image_size;
  if (options.backend == ImageOptions::Backend::kTorchvision) {
    return TorchvisionStyleTensor(image, s);
  }
  const RgbImage resized = ResizeBilinearAntialiased(image, s, s);
  at::Tensor out = torch::empty({3, s, s}, torch::kFloat32);
  float* dst = out.data_ptr<float>();
  const size_t plane = static_cast<size_t>(s) * s;
  // HF (PIL backend): float32(double(v) * (1 / 255)), then (x - 0.5f) / 0.5f.
  float lut[256];
  for (int v = 0; v < 256; ++v) {
    const float rescaled =
        static_cast<float>(static_cast<double>(v) * (1.0 / 255.0));
    lut[v] = (rescaled - 0.5f) / 0.5f;
  }
  for (size_t i = 0; i < plane; ++i) {
    for (int c = 0; c < 3; ++c)
      dst[c * plane + i] = lut[resized.pixels[i * 3 + c]];
  }
  return out;
}

at::Tensor PreprocessImage(const RgbImage& image, const ImageOptions& options) {
  std::vector<at::Tensor> rows{ImageToTensor(image, options)};
  if (options.do_pan_and_scan) {
    for (const RgbImage& crop : PanAndScanCrops(image, options))
      rows.push_back(ImageToTensor(crop, options));
  }
  return torch::stack(rows);
}

absl::StatusOr<at::Tensor> LoadImageTensor(const std::string& path,
                                           const ImageOptions& options) {
  absl::StatusOr<RgbImage> image = DecodeImageFile(path);
  if (!image.ok()) return image.status();
  return PreprocessImage(*image, options);
}

}  // namespace gemma
