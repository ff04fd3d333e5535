// PIL's 8-bit resampling (Pillow 13.0's Resample.c), bit for bit, for any of
// its separable filters: the Gemma 3 processor resizes with BILINEAR
// (data/image.h), the Gemma 4 one with BICUBIC (data/gemma4_image.h).
//
// What is reproduced: the filter widened by the scale when shrinking, its taps
// normalised to sum 1 and rounded to fixed point with 22 fraction bits (half
// away from zero), one uint8 rounding after each of the two separable passes,
// and Pillow 13's pass order (vertical first when the height shrinks by more
// than twice what the width shrinks by, else horizontal first; older Pillow
// always went horizontal first).
#ifndef GEMMA_DATA_PIL_RESAMPLE_H_
#define GEMMA_DATA_PIL_RESAMPLE_H_

#include "data/image.h"

namespace gemma {

// A resampling filter as PIL defines one: the kernel, and its support radius
// at scale 1 (the kernel is 0 beyond it).
struct PilFilter {
  double (*kernel)(double x);
  double support;
};

// PIL's Image.BILINEAR: the triangle filter, support 1.
extern const PilFilter kPilBilinear;
// PIL's Image.BICUBIC: the cubic convolution filter with a = -0.5, support 2.
extern const PilFilter kPilBicubic;

// Like PIL's Image.resize((out_width, out_height), filter) on 8-bit RGB:
// bit-identical output. A side whose size does not change is not resampled.
// Sizes must be >= 1.
RgbImage PilResize(const RgbImage& image, int out_height, int out_width,
                   const PilFilter& filter);

}  // namespace gemma

#endif  // GEMMA_DATA_PIL_RESAMPLE_H_
