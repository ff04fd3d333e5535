#include "data/gemma4_image.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

// PIL's fixed-point precision for 8-bit resampling (Resample.c).
constexpr int kPrecisionBits = 32 - 8 - 2;

double BicubicFilter(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;
};

// PIL precompute_coeffs + normalize_coeffs_8bpc for the bicubic filter.
Coefficients ComputeCoefficients(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  const double inv = 1.0 / filter_scale;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double total = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[x] = BicubicFilter((x + xmin - center + 0.5) * inv);
      total += w[x];
    }
    for (int x = 0; x < xmax; ++x) {
      if (total != 0.0) w[x] /= total;
    }
    for (int x = 0; x < xmax; ++x) {
      const double v = w[x] * (1 << kPrecisionBits);
      c.weights[static_cast<size_t>(xx) * c.ksize + x] =
          static_cast<int32_t>(v < 0 ? -0.5 + v : 0.5 + v);
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

uint8_t Clip8(int32_t v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

RgbImage Horizontal(const RgbImage& in, int out_width) {
  const Coefficients c = ComputeCoefficients(in.width, out_width);
  RgbImage out{
      in.height, out_width,
      std::vector<uint8_t>(static_cast<size_t>(in.height) * out_width * 3)};
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* row = &in.pixels[static_cast<size_t>(y) * in.width * 3];
    uint8_t* dst = &out.pixels[static_cast<size_t>(y) * out_width * 3];
    for (int xx = 0; xx < out_width; ++xx) {
      const int32_t* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
      int32_t s[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1),
                      1 << (kPrecisionBits - 1)};
      for (int x = 0; x < c.count[xx]; ++x) {
        const uint8_t* p = row + (c.first[xx] + x) * 3;
        for (int ch = 0; ch < 3; ++ch) s[ch] += p[ch] * k[x];
      }
      for (int ch = 0; ch < 3; ++ch) dst[xx * 3 + ch] = Clip8(s[ch]);
    }
  }
  return out;
}

RgbImage Vertical(const RgbImage& in, int out_height) {
  const Coefficients c = ComputeCoefficients(in.height, out_height);
  const size_t row_len = static_cast<size_t>(in.width) * 3;
  RgbImage out{out_height, in.width,
               std::vector<uint8_t>(out_height * row_len)};
  std::vector<int32_t> acc(row_len);
  for (int yy = 0; yy < out_height; ++yy) {
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    const int32_t* k = &c.weights[static_cast<size_t>(yy) * c.ksize];
    for (int y = 0; y < c.count[yy]; ++y) {
      const uint8_t* row = &in.pixels[(c.first[yy] + y) * row_len];
      for (size_t i = 0; i < row_len; ++i) acc[i] += row[i] * k[y];
    }
    uint8_t* dst = &out.pixels[yy * row_len];
    for (size_t i = 0; i < row_len; ++i) dst[i] = Clip8(acc[i]);
  }
  return out;
}

}  // namespace

RgbImage ResizeBicubicAntialiased(const RgbImage& image, int out_height,
                                  int out_width) {
  // Pillow 13's pass order (see ResizeBilinearAntialiased in data/image.cc).
  const int dh = image.height - out_height, dw = image.width - out_width;
  const bool vertical_first = dh > 0 && dh > dw * 2;
  RgbImage cur = image;
  if (vertical_first) {
    if (out_height != image.height) cur = Vertical(cur, out_height);
    if (out_width != image.width) cur = Horizontal(cur, out_width);
  } else {
    if (out_width != image.width) cur = Horizontal(cur, out_width);
    if (out_height != image.height) cur = Vertical(cur, out_height);
  }
  return cur;
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
  if (th == 0) {
    th = side;
    tw = std::min(
        static_cast<int>(std::floor(static_cast<double>(width) / height)) *
            side,
        max_side);
  } else if (tw == 0) {
    tw = side;
    th = std::min(
        static_cast<int>(std::floor(static_cast<double>(height) / width)) *
            side,
        max_side);
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
  out.max_patches =
      o.max_soft_tokens * o.pooling_kernel_size * o.pooling_kernel_size;
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
