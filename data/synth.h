// A synthetic OCR dataset for end-to-end tests of VL fine-tuning where no
// real data can be downloaded: receipt-like images drawn with OpenCV
// (store, date, items with counts and prices, total) and their Donut/CORD
// style targets, plus a Gemma-style SentencePiece tokenizer trained on the
// dataset's text.
//
// Layout written under out_dir (all or nothing: built in a temp folder, then
// renamed into place):
//   images/000000.png ...  the receipts (image_size x image_size, RGB)
//   train.jsonl            HF messages: user [image, "Describe this image."],
//                          assistant [CordTarget(gt_parse)]
//   metadata.jsonl         CORD-v2 / Donut layout: {"file_name",
//   "ground_truth"} tokenizer.model        (when train_tokenizer) Gemma
//   specials at 0..9, then the
//                          <s_key> tags as user-defined pieces
// Everything is a pure function of the options (same seed, same bytes).
//
// Two levels of difficulty (SynthLevel):
//   full  the receipt as a shop prints it: store, date, 1-5 items with counts
//         and prices, total; small text at jittered positions. A real model's
//         task: at the image sizes a tiny model sees, the text is a blur.
//   easy  a tiny model's task: a 4 x 4 grid of large black glyphs, one per
//         cell, at fixed positions: row 0 the store (a 4-letter word of 8),
//         rows 1 and 2 an item each as "CxPP" (count 1-9, line price 10-99),
//         row 3 the total (the sum of the prices), left-aligned. With a patch
//         of image_size / 4 pixels each patch holds one glyph. The receipts of
//         a data set are all different (their values are a permutation of all
//         possible ones), so a held-out receipt is never a training one.
#ifndef GEMMA_DATA_SYNTH_H_
#define GEMMA_DATA_SYNTH_H_

#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gemma {

enum class SynthLevel { kFull, kEasy };

// "full" / "easy".
std::string_view SynthLevelName(SynthLevel level);
absl::StatusOr<SynthLevel> ParseSynthLevel(std::string_view name);

struct SynthOcrOptions {
  std::string out_dir;  // must not exist, or be an empty folder
  int num_examples = 100;
  uint64_t seed = 0;
  SynthLevel level = SynthLevel::kFull;
  int image_size = 896;
  bool train_tokenizer = true;
  int vocab_size = 1024;  // upper bound
  // Called after each example with (done, total); may be empty.
  std::function<void(int, int)> progress;
};

// The ground truth of receipt `index` of a dataset with `seed` (CORD-like keys:
// full: store.nm, date, menu[{nm, cnt, price}], total.total_price;
// easy: store.nm, menu[{cnt, price}] (2 items), total.total_price).
nlohmann::json SynthReceiptGroundTruth(uint64_t seed, int index,
                                       SynthLevel level = SynthLevel::kFull);

// How many different easy receipts there are (an easy data set holds at most
// this many).
int64_t SynthEasyReceiptCount();

absl::Status WriteSyntheticOcrDataset(const SynthOcrOptions& options);

}  // namespace gemma

#endif  // GEMMA_DATA_SYNTH_H_
