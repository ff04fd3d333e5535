#include "data/gemma4_image.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "data/pil_resample.h"

namespace gemma {

RgbImage ResizeBicubicAntialiased(const RgbImage& image, int out_height,
                                  int out_width) {
  return PilResize(image, out_height, out_width, kPilBicubic);
}

absl::StatusOr<std::pair<int, int>> Gemma4ResizeTarget(
    int height, int width, const Gemma4ImageOptions& o) {
  if (height <= 0 || width <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image of size ", height, "x", width, " is empty"));
  }
  const int64_t k2 =
      static_cast<int64_t>(o.pooling_kernel_size) * o.pooling_kernel_size;
  const int64_t max_patches = o.max_soft_tokens * k2;
  const double total_px = static_cast<double>(height) * width;
  const double target_px =
      static_cast<double>(max_patches) * o.patch_size * o.patch_size;
  const double factor = std::sqrt(target_px / total_px);
  const double ideal_h = factor * height, ideal_w = factor * width;
  const int side = o.pooling_kernel_size * o.patch_size;
  int th = static_cast<int>(std::floor(ideal_h / side)) * side;
  int tw = static_cast<int>(std::floor(ideal_w / side)) * side;
  if (th == 0 && tw == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resize a ", height, "x", width,
                     " image to a non-empty multiple of ", side));
  }
  const int max_side = static_cast<int>(max_patches / k2) * side;
  // A thin image: one block on its short side, floor(long / short) blocks on
  // its long side (at most max_side).
  const auto along = [&](int long_side, int short_side) {
    const double blocks =
        std::floor(static_cast<double>(long_side) / short_side);
    return std::min(static_cast<int>(blocks) * side, max_side);
  };
  if (th == 0) {
    th = side;
    tw = along(width, height);
  } else if (tw == 0) {
    tw = side;
    th = along(height, width);
  }
  if (static_cast<double>(th) * tw > target_px) {
    return absl::InvalidArgumentError(
        absl::StrCat("resizing ", height, "x", width, " to ", th, "x", tw,
                     " exceeds ", max_patches, " patches"));
  }
  return std::make_pair(th, tw);
}

absl::Status ValidateGemma4ImageOptions(const Gemma4ImageOptions& o) {
  const int allowed[] = {70, 140, 280, 560, 1120};
  if (std::find(std::begin(allowed), std::end(allowed), o.max_soft_tokens) ==
      std::end(allowed)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_soft_tokens must be one of 70, 140, 280, 560, 1120, got ",
        o.max_soft_tokens));
  }
  if (o.patch_size < 1 || o.pooling_kernel_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "patch_size (", o.patch_size, ") and pooling_kernel_size (",
        o.pooling_kernel_size, ") must be >= 1"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Gemma4ImagePatches> Gemma4PreprocessImage(
    const RgbImage& image, const Gemma4ImageOptions& o) {
  if (absl::Status s = ValidateGemma4ImageOptions(o); !s.ok()) return s;
  auto target = Gemma4ResizeTarget(image.height, image.width, o);
  if (!target.ok()) return target.status();
  const auto [th, tw] = *target;
  const RgbImage resized = (th == image.height && tw == image.width)
                               ? image
                               : ResizeBicubicAntialiased(image, th, tw);
  Gemma4ImagePatches out;
  const int ps = o.patch_size;
  out.height = th;
  out.width = tw;
  out.max_patches = Gemma4MaxPatches(o);
  out.patch_dim = 3 * ps * ps;
  const int ph = th / ps, pw = tw / ps;
  out.num_soft_tokens =
      ph * pw / (o.pooling_kernel_size * o.pooling_kernel_size);
  out.pixel_values.assign(static_cast<size_t>(out.max_patches) * out.patch_dim,
                          0.0f);
  out.positions.assign(static_cast<size_t>(out.max_patches) * 2, -1);
  for (int r = 0; r < ph; ++r) {
    for (int c = 0; c < pw; ++c) {
      const size_t p = static_cast<size_t>(r) * pw + c;
      float* dst = &out.pixel_values[p * out.patch_dim];
      for (int y = 0; y < ps; ++y) {
        for (int x = 0; x < ps; ++x) {
          for (int ch = 0; ch < 3; ++ch) {
            const uint8_t v = resized.at(r * ps + y, c * ps + x, ch);
            *dst++ = static_cast<float>(static_cast<double>(v) * (1.0 / 255.0));
          }
        }
      }
      out.positions[p * 2] = c;
      out.positions[p * 2 + 1] = r;
    }
  }
  return out;
}

}  // namespace gemma
