// Batching for training: conversations -> tensors, with deterministic
// shuffling and a resumable position.
//
// The example stream is the concatenation of per-epoch permutations of the
// dataset (epoch e's order depends only on (seed, e)); batches are cut from
// that stream in order, so a loader restored to a position produces exactly
// the batches an uninterrupted run would have produced from there.
//
// Gemma 4 (VL or text): set
//   bo.chat.format = ChatFormat::kGemma4;
//   bo.gemma4_image.patch_size = vision.patch_size;
//   bo.gemma4_image.pooling_kernel_size = vision.pooling_kernel_size;
//   bo.gemma4_image.max_soft_tokens = the processor's max_soft_tokens (280
//                                     unless the model card says otherwise);
// (vision = Gemma4ModelConfig::vision, model/gemma4_config.h) with a Gemma 4
// tokenizer.model (the ids of <|image|> / <|image> / <image|> should equal the
// config's image_token_id / boi_token_id / eoi_token_id). Each batch's
// input_ids, pixel_values and image_positions then feed Gemma4Inputs
// (model/gemma4_model.h) directly: the k-th run of <|image|> tokens in
// row-major order belongs to image k, and image k's soft-token count equals
// its run's length. labels / attention_mask / position_ids / segment_ids are
// as for Gemma 3; token_type_ids is HF's mm_token_type_ids (1 on <|image|>).
#ifndef GEMMA_DATA_BATCH_H_
#define GEMMA_DATA_BATCH_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/chat.h"
#include "data/gemma4_image.h"
#include "data/image.h"
#include "data/tokenizer.h"

namespace gemma {

struct BatchOptions {
  int batch_size = 1;  // rows per batch
  int seq_len = 2048;  // most tokens in one row
  // Right padding goes to the longest row of the batch, rounded up to this
  // multiple (0 = no rounding; 128 suits the kernels). The padded length may
  // pass seq_len when seq_len is not a multiple of it; rows never do.
  int pad_to_multiple = 0;
  // Pack several text-only conversations into one row (segment ids keep
  // attention inside each); a conversation with images is then an error.
  bool pack = false;
  // The model has no vision tower: a conversation with images is a bad
  // example naming its source (an error, or skipped with skip_bad).
  bool text_only = false;
  bool shuffle = true;
  uint64_t seed = 0;
  // Off: a bad example (missing or corrupt image, longer than seq_len, bad
  // roles) is an error naming its source. On: it is skipped and counted.
  bool skip_bad = false;
  ChatOptions chat;    // chat.format picks Gemma 3 or Gemma 4 conversations
  ImageOptions image;  // Gemma 3 images (SigLIP, fixed size)
  Gemma4ImageOptions gemma4_image;  // Gemma 4 images (chat.format kGemma4)
};

// One batch; B rows, T = padded length.
struct Batch {
  at::Tensor input_ids;  // [B, T] int64; padding is the pad id
  at::Tensor labels;     // [B, T] int64; -100 off target tokens and on padding
                         // (not shifted)
  at::Tensor attention_mask;  // [B, T] int64; 1 on tokens, 0 on padding
  // [B, T] int32; 1, 2, ... for the conversations packed in a row, 0 on
  // padding. Token i may attend to j only when segment_ids match (and j <= i
  // outside image blocks).
  at::Tensor segment_ids;
  at::Tensor position_ids;    // [B, T] int64; restarts at 0 in each segment
  at::Tensor token_type_ids;  // [B, T] int64; 1 on image soft tokens
  // Every image of the batch in row-major order of their image tokens; N may
  // be 0.
  //   Gemma 3: [N, 3, S, S] float32, each image followed by its pan-and-scan
  //     crops.
  //   Gemma 4: [N, P, 3 * patch^2] float32 in [0, 1], P = max_soft_tokens *
  //     pooling_kernel^2 (every image padded to the budget's patch count with
  //     zero patches, as HF's Gemma4ImageProcessor returns them); patch values
  //     in (y, x, channel) order (data/gemma4_image.h).
  at::Tensor pixel_values;
  // Gemma 4: [N, P, 2] int64, each patch's (x, y) in its image's patch grid,
  // (-1, -1) on padding patches (HF's image_position_ids). Gemma 3: undefined.
  at::Tensor image_positions;
  std::vector<int> images_per_row;  // entries of pixel_values per row
  int64_t num_conversations = 0;
};

// Where the next batch starts: `index` is the position in epoch `epoch`'s
// permutation of the next conversation not yet in any batch.
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t index = 0;
  bool operator==(const LoaderPosition& o) const {
    return epoch == o.epoch && index == o.index;
  }
};

// The permutation of [0, n) used in `epoch` (identity when !shuffle).
// Stable across platforms (own generator, own Fisher-Yates).
std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch,
                                bool shuffle);

// Not thread-safe: one consumer calls Next() (images are decoded and
// tokenized inside Next, on the caller's thread).
class DataLoader {
 public:
  // `tokenizer` must outlive the loader. InvalidArgument on empty data or
  // bad options.
  static absl::StatusOr<std::unique_ptr<DataLoader>> Create(
      std::vector<Conversation> data, const Tokenizer* tokenizer,
      BatchOptions options);

  // The next batch (the stream never ends: it moves on to the next epoch).
  // Errors name the conversation's source; with skip_bad, bad conversations
  // are skipped and counted instead (an error only if nothing is usable).
  absl::StatusOr<Batch> Next();

  LoaderPosition position() const { return pos_; }
  // Moves to a position saved from position(); OutOfRange when index is
  // past the dataset.
  absl::Status Seek(LoaderPosition pos);

  int64_t size() const { return static_cast<int64_t>(data_.size()); }
  int64_t skipped() const { return skipped_; }

 private:
  struct Encoded;
  DataLoader(std::vector<Conversation> data, const Tokenizer* tokenizer,
             BatchOptions options);
  // Encodes the conversation at pos_ (images loaded); nullopt when skipped.
  absl::StatusOr<std::optional<Encoded>> EncodeAt(LoaderPosition pos);
  void Advance();
  const std::vector<int64_t>& Order(int64_t epoch);

  const std::vector<Conversation> data_;
  const Tokenizer* const tokenizer_;
  const BatchOptions options_;
  LoaderPosition pos_;
  int64_t skipped_ = 0;
  int64_t order_epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace gemma

#endif  // GEMMA_DATA_BATCH_H_
