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
#ifndef GEMMA_DATA_SYNTH_H_
#define GEMMA_DATA_SYNTH_H_

#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "absl/status/status.h"

namespace gemma {

struct SynthOcrOptions {
  std::string out_dir;  // must not exist, or be an empty folder
  int num_examples = 100;
  uint64_t seed = 0;
  int image_size = 896;
  bool train_tokenizer = true;
  int vocab_size = 1024;  // upper bound
  // Called after each example with (done, total); may be empty.
  std::function<void(int, int)> progress;
};

// The ground truth of receipt `index` of a dataset with `seed` (CORD-like keys:
// store.nm, date, menu[{nm, cnt, price}], total.total_price).
nlohmann::json SynthReceiptGroundTruth(uint64_t seed, int index);

absl::Status WriteSyntheticOcrDataset(const SynthOcrOptions& options);

}  // namespace gemma

#endif  // GEMMA_DATA_SYNTH_H_
