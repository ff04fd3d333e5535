#include "data/pil_resample.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace gemma {
namespace {

// PIL's fixed-point precision for 8-bit resampling (Resample.c).
constexpr int kPrecisionBits = 32 - 8 - 2;

double TriangleKernel(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double BicubicKernel(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Per output position: the first input index, the number of taps, and the
// fixed-point weights (a row of `ksize`).
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;
};

// The taps of `filter` widened by the scale when shrinking, normalised to sum
// 1, then rounded to fixed point (half away from zero), exactly as PIL's
// precompute_coeffs + normalize_coeffs_8bpc do.
Coefficients ComputeCoefficients(int in_size, int out_size,
                                 const PilFilter& filter) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = filter.support * filter_scale;
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
      w[x] = filter.kernel((x + xmin - center + 0.5) * inv);
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

RgbImage ResampleHorizontal(const RgbImage& in, int out_width,
                            const PilFilter& filter) {
  const Coefficients c = ComputeCoefficients(in.width, out_width, filter);
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

RgbImage ResampleVertical(const RgbImage& in, int out_height,
                          const PilFilter& filter) {
  const Coefficients c = ComputeCoefficients(in.height, out_height, filter);
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

const PilFilter kPilBilinear = {&TriangleKernel, 1.0};
const PilFilter kPilBicubic = {&BicubicKernel, 2.0};

RgbImage PilResize(const RgbImage& image, int out_height, int out_width,
                   const PilFilter& filter) {
  // Each pass rounds to uint8, so the order shows in the last bit.
  const int dh = image.height - out_height, dw = image.width - out_width;
  const bool vertical_first = dh > 0 && dh > dw * 2;
  RgbImage cur = image;
  if (vertical_first) {
    if (out_height != image.height)
      cur = ResampleVertical(cur, out_height, filter);
    if (out_width != image.width)
      cur = ResampleHorizontal(cur, out_width, filter);
  } else {
    if (out_width != image.width)
      cur = ResampleHorizontal(cur, out_width, filter);
    if (out_height != image.height)
      cur = ResampleVertical(cur, out_height, filter);
  }
  return cur;
}

}  // namespace gemma
