// Evaluation metrics on text (no LibTorch): exact match, character error rate,
// field-level F1 for Donut/CORD-style `<s_key>value</s_key>` outputs, and the
// aggregation of teacher-forced loss / token accuracy / perplexity.
//
// Definitions (what the eval job reports):
//   * NormalizeWhitespace: leading and trailing whitespace removed and every
//     inner run of ASCII whitespace (space, \t, \n, \r, \f, \v) replaced by one
//     space. Exact match compares the normalised texts byte for byte (case
//     kept).
//   * Character error rate of one pair: Levenshtein distance (insert, delete,
//     substitute, each cost 1) over Unicode code points of the raw texts,
//     divided by the reference's code-point count. An empty reference gives 0
//     when the prediction is empty too, else 1. Invalid UTF-8 bytes count as
//     one code point each. The corpus CER is the sum of distances over the sum
//     of reference lengths (micro average).
//   * Field F1, following Donut's JSONParseEvaluator.cal_f1 (the CORD metric):
//     each text is parsed into (key path, value) pairs: `<s_k>v</s_k>` gives
//     ("k", v); nested tags join keys with "." ("menu.nm"); list items
//     separated by `<sep/>` are flattened without an index, so a list of dicts
//     gives repeated paths and a leaf "a<sep/>b" gives two pairs; values are
//     stripped of surrounding whitespace and empty ones dropped. Malformed
//     output is tolerated as Donut's token2json does: an opening tag without
//     its closing tag is dropped (parsing goes on after it), stray closing
//     tags and text outside tags are ignored. Pairs are matched as multisets:
//     tp = |pred ∩ ref|, and over a corpus (micro average)
//     precision = Σtp / Σ|pred|, recall = Σtp / Σ|ref|,
//     F1 = 2·Σtp / (Σ|pred| + Σ|ref|) (Donut's tp / (tp + (fp + fn) / 2)).
//     Nothing predicted and nothing expected: F1 = 1.
//   * Teacher-forced loss: sum of -log p over target tokens / target tokens;
//     perplexity = exp(that mean); token accuracy = argmax hits / targets.
#ifndef GEMMA_DATA_METRICS_H_
#define GEMMA_DATA_METRICS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gemma {

std::string NormalizeWhitespace(std::string_view text);
bool ExactMatch(std::string_view prediction, std::string_view reference);

// UTF-8 -> code points (an invalid byte becomes one code point of its value).
std::u32string Utf8ToCodePoints(std::string_view text);
int64_t EditDistance(const std::u32string& a, const std::u32string& b);
double CharErrorRate(std::string_view prediction, std::string_view reference);

// (key path, value) pairs of a `<s_key>` text, in order of appearance.
std::vector<std::pair<std::string, std::string>> ParseFieldPairs(
    std::string_view text);

struct FieldCounts {
  int64_t true_positives = 0;
  int64_t predicted = 0;  // pairs in the prediction
  int64_t expected = 0;   // pairs in the reference
  double precision() const;
  double recall() const;
  double f1() const;
};
FieldCounts FieldMatch(std::string_view prediction, std::string_view reference);

// Accumulates generation metrics over examples.
class GenerationMetrics {
 public:
  void Add(std::string_view prediction, std::string_view reference);
  int64_t examples() const { return examples_; }
  double exact_match() const;  // fraction of examples
  double cer() const;          // corpus CER (micro)
  const FieldCounts& fields() const { return fields_; }

 private:
  int64_t examples_ = 0;
  int64_t exact_ = 0;
  int64_t edits_ = 0;
  int64_t ref_chars_ = 0;
  FieldCounts fields_;
};

// Accumulates teacher-forced loss over batches.
struct LossMetrics {
  double loss_sum = 0.0;
  int64_t tokens = 0;
  int64_t correct = 0;
  void Add(double batch_loss_sum, int64_t batch_tokens, int64_t batch_correct);
  double loss() const;        // 0 when no tokens
  double perplexity() const;  // exp(loss())
  double accuracy() const;    // 0 when no tokens
};

}  // namespace gemma

#endif  // GEMMA_DATA_METRICS_H_
