// Image loading and preprocessing for Gemma 3 vision inputs, matching Hugging
// Face's Gemma 3 image processor (transformers 5.17).
//
// Which HF path is matched: `AutoImageProcessor` for gemma3 picks
// `Gemma3ImageProcessor` (torchvision backend) when torchvision is installed;
// our virtualenv has none (AutoImageProcessor then refuses to load and
// `Gemma3ImageProcessorPil` is the processor that works). The default,
// ImageOptions::Backend::kPil, matches the PIL backend bit for bit: PIL's
// BILINEAR `Image.resize` on 8-bit RGB (a triangle filter widened by the scale
// when downsampling, fixed-point coefficients with 22 fraction bits, one uint8
// rounding after each of the two separable passes, in Pillow 13.0's pass
// order), then float32(double(v) * (1/255)), then (x - 0.5f) / 0.5f in float32.
//
// Pixel layout: RgbImage holds interleaved 8-bit RGB rows (HWC), the tensors
// are CHW float32 in [-1, 1].
#ifndef GEMMA_DATA_IMAGE_H_
#define GEMMA_DATA_IMAGE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gemma {

// 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B.
struct RgbImage {
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;  // height * width * 3

  uint8_t at(int y, int x, int c) const {
    return pixels[(static_cast<size_t>(y) * width + x) * 3 + c];
  }
};

// The processor's parameters; defaults are Gemma 3's (pan-and-scan values are
// Gemma3Processor's defaults, used only when do_pan_and_scan is set).
struct ImageOptions {
  // Which HF backend to reproduce. kPil (default): Gemma3ImageProcessorPil,
  // matched bit for bit. kTorchvision: Gemma3ImageProcessor (what
  // AutoImageProcessor picks when torchvision is installed): LibTorch's
  // antialiased bilinear interpolate on the uint8 image, then
  // (x - 127.5) / 127.5 in float32; it differs from kPil by at most one
  // uint8 level in places.
  enum class Backend { kPil, kTorchvision };
  Backend backend = Backend::kPil;
  int image_size = 896;  // output is image_size x image_size
  bool do_pan_and_scan = false;
  int pan_and_scan_min_crop_size = 256;
  int pan_and_scan_max_num_crops = 4;
  double pan_and_scan_min_ratio_to_activate = 1.2;
};

// Reads and decodes an image file in any format OpenCV's imgcodecs reads
// (PNG, JPEG, BMP, TIFF, WebP, ...). EXIF orientation is applied (as
// transformers' `load_image` does with `ImageOps.exif_transpose`); gray images
// are replicated to RGB, an alpha channel is dropped (PIL's convert("RGB")),
// 16-bit gray is clipped at 255 and 16-bit colour keeps its high byte (as PIL
// does).
// Errors: NotFound when the file is missing, InvalidArgument when it cannot be
// decoded; both name the path.
absl::StatusOr<RgbImage> DecodeImageFile(const std::string& path);

// Decodes an encoded image held in memory (same rules as DecodeImageFile);
// `name` is used in error messages.
absl::StatusOr<RgbImage> DecodeImageBytes(const std::string& bytes,
                                          const std::string& name);

// Resizes like PIL's Image.resize((out_width, out_height), Image.BILINEAR):
// bit-identical output for 8-bit RGB (PilResize with kPilBilinear, see
// data/pil_resample.h). Sizes must be >= 1.
RgbImage ResizeBilinearAntialiased(const RgbImage& image, int out_height,
                                   int out_width);

// The sub-rectangle [y, y + h) x [x, x + w), clipped to the image (as Python
// slicing clips).
RgbImage Crop(const RgbImage& image, int y, int x, int h, int w);

// Gemma 3's pan-and-scan crops of `image` (empty when the image is not
// elongated enough or the crops would be smaller than the minimum size).
// Same rule as HF's `pan_and_scan`: crops along the long side, row-major.
std::vector<RgbImage> PanAndScanCrops(const RgbImage& image,
                                      const ImageOptions& options);

// Resizes to image_size x image_size, rescales and normalises to a
// [3, image_size, image_size] float32 tensor.
at::Tensor ImageToTensor(const RgbImage& image, const ImageOptions& options);

// The full processor for one image: a [1 + num_crops, 3, S, S] float32 tensor
// whose row 0 is the whole image and rows 1.. are its pan-and-scan crops (none
// unless options.do_pan_and_scan).
at::Tensor PreprocessImage(const RgbImage& image, const ImageOptions& options);

// DecodeImageFile + PreprocessImage.
absl::StatusOr<at::Tensor> LoadImageTensor(const std::string& path,
                                           const ImageOptions& options);

}  // namespace gemma

#endif  // GEMMA_DATA_IMAGE_H_
