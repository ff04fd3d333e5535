// The Gemma 4 image processor (transformers 5.17 Gemma4ImageProcessorPil):
// aspect-preserving resize to a patch budget, rescale to [0, 1], patches and
// their (x, y) positions padded to the budget, and the soft-token count.
//
//   max_patches = max_soft_tokens * k^2 (k = pooling_kernel_size);
//   target size = the largest (h, w), multiples of k * patch_size, with
//     h * w <= max_patches * patch_size^2 and the aspect ratio kept
//     (Gemma4ResizeTarget spells out HF's rules, thin images included);
//   resize: PIL BICUBIC on 8-bit RGB, reproduced bit for bit (PIL's
//     fixed-point separable resampling, bicubic a = -0.5, widened by the
//     scale when shrinking, each pass rounded to uint8, Pillow 13's order);
//   pixels float32(v / 255); patch p = (row r, col c) of the patch grid in
//     row-major order, its values in (y, x, channel) order inside the patch;
//   positions (c, r); padding patches all 0 with position (-1, -1);
//   soft tokens = number of patches / k^2 (the vision tower's pooled count).
// LibTorch-free.
#ifndef GEMMA_DATA_GEMMA4_IMAGE_H_
#define GEMMA_DATA_GEMMA4_IMAGE_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "data/image.h"

namespace gemma {

struct Gemma4ImageOptions {
  int patch_size = 16;
  int pooling_kernel_size = 3;
  int max_soft_tokens = 280;  // one of 70, 140, 280, 560, 1120
};

struct Gemma4ImagePatches {
  int height = 0, width = 0;  // resized image
  int num_soft_tokens = 0;
  int max_patches = 0;
  int patch_dim = 0;                // 3 * patch_size^2
  std::vector<float> pixel_values;  // [max_patches, patch_dim]
  std::vector<int64_t> positions;   // [max_patches, 2] (x, y), -1 = padding
};

// InvalidArgument for a max_soft_tokens outside {70, 140, 280, 560, 1120}
// (HF's allowed budgets) or a patch / pooling size below 1.
absl::Status ValidateGemma4ImageOptions(const Gemma4ImageOptions& options);

// max_soft_tokens * pooling_kernel_size^2: the patch count every image is
// padded to.
inline int Gemma4MaxPatches(const Gemma4ImageOptions& o) {
  return o.max_soft_tokens * o.pooling_kernel_size * o.pooling_kernel_size;
}

// HF get_aspect_ratio_preserving_size: (height, width) after resizing, or
// InvalidArgument when the image cannot fit (a 0 x 0 target).
absl::StatusOr<std::pair<int, int>> Gemma4ResizeTarget(
    int height, int width, const Gemma4ImageOptions& options);

// Like PIL's Image.resize((out_width, out_height), Image.BICUBIC) on 8-bit
// RGB, bit for bit (PilResize with kPilBicubic, see data/pil_resample.h).
// Sizes >= 1.
RgbImage ResizeBicubicAntialiased(const RgbImage& image, int out_height,
                                  int out_width);

// The whole processor for one image. InvalidArgument for options that
// ValidateGemma4ImageOptions refuses or an image that cannot be resized.
absl::StatusOr<Gemma4ImagePatches> Gemma4PreprocessImage(
    const RgbImage& image, const Gemma4ImageOptions& options = {});

}  // namespace gemma

#endif  // GEMMA_DATA_GEMMA4_IMAGE_H_
