#include "data/metrics.h"

#include <algorithm>
#include <cmath>

namespace gemma {
namespace {

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
         c == '\v';
}

std::string_view Strip(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

void ParseInto(std::string_view text, const std::string& prefix,
               std::vector<std::pair<std::string, std::string>>* out) {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t open = text.find("<s_", pos);
    if (open == std::string_view::npos) break;
    const size_t name_end = text.find('>', open + 3);
    if (name_end == std::string_view::npos) break;
    const std::string_view key = text.substr(open + 3, name_end - open - 3);
    if (key.empty() || key.find('<') != std::string_view::npos) {
      pos = open + 3;  // not a tag ("<s_<s_x>")
      continue;
    }
    const std::string end_tag = "</s_" + std::string(key) + ">";
    const size_t begin = name_end + 1;
    const size_t end = text.find(end_tag, begin);
    if (end == std::string_view::npos) {
      pos = begin;  // an unclosed tag is dropped; what follows still counts
      continue;
    }
    const std::string_view content = text.substr(begin, end - begin);
    const std::string path =
        prefix.empty() ? std::string(key) : prefix + "." + std::string(key);
    if (content.find("<s_") != std::string_view::npos) {
      ParseInto(content, path, out);
    } else {
      size_t from = 0;
      while (from <= content.size()) {
        size_t sep = content.find("<sep/>", from);
        if (sep == std::string_view::npos) sep = content.size();
        const std::string_view value = Strip(content.substr(from, sep - from));
        if (!value.empty()) out->emplace_back(path, std::string(value));
        from = sep + 6;
      }
    }
    pos = end + end_tag.size();
  }
}

}  // namespace

std::string NormalizeWhitespace(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool pending_space = false;
  for (char c : Strip(text)) {
    if (IsSpace(c)) {
      pending_space = true;
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(c);
  }
  return out;
}

bool ExactMatch(std::string_view prediction, std::string_view reference) {
  return NormalizeWhitespace(prediction) == NormalizeWhitespace(reference);
}

std::u32string Utf8ToCodePoints(std::string_view s) {
  std::u32string out;
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len = 0;
    char32_t cp = 0;
    if (c < 0x80) {
      len = 1;
      cp = c;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    }
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (!ok) {
      out.push_back(c);  // an invalid byte is one code point
      ++i;
      continue;
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

int64_t EditDistance(const std::u32string& a, const std::u32string& b) {
  std::vector<int64_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = static_cast<int64_t>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = static_cast<int64_t>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int64_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({sub, prev[j] + 1, cur[j - 1] + 1});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

double CharErrorRate(std::string_view prediction, std::string_view reference) {
  const std::u32string p = Utf8ToCodePoints(prediction);
  const std::u32string r = Utf8ToCodePoints(reference);
  if (r.empty()) return p.empty() ? 0.0 : 1.0;
  return static_cast<double>(EditDistance(p, r)) /
         static_cast<double>(r.size());
}

std::vector<std::pair<std::string, std::string>> ParseFieldPairs(
    std::string_view text) {
  std::vector<std::pair<std::string, std::string>> out;
  ParseInto(text, "", &out);
  return out;
}

double FieldCounts::precision() const {
  return predicted == 0 ? (expected == 0 ? 1.0 : 0.0)
                        : static_cast<double>(true_positives) / predicted;
}
double FieldCounts::recall() const {
  return expected == 0 ? (predicted == 0 ? 1.0 : 0.0)
                       : static_cast<double>(true_positives) / expected;
}
double FieldCounts::f1() const {
  if (predicted + expected == 0) return 1.0;
  return 2.0 * static_cast<double>(true_positives) /
         static_cast<double>(predicted + expected);
}

FieldCounts FieldMatch(std::string_view prediction,
                       std::string_view reference) {
  auto p = ParseFieldPairs(prediction);
  auto r = ParseFieldPairs(reference);
  std::sort(p.begin(), p.end());
  std::sort(r.begin(), r.end());
  FieldCounts c;
  c.predicted = static_cast<int64_t>(p.size());
  c.expected = static_cast<int64_t>(r.size());
  size_t i = 0, j = 0;
  while (i < p.size() && j < r.size()) {
    if (p[i] == r[j]) {
      ++c.true_positives;
      ++i;
      ++j;
    } else if (p[i] < r[j]) {
      ++i;
    } else {
      ++j;
    }
  }
  return c;
}

void GenerationMetrics::Add(std::string_view prediction,
                            std::string_view reference) {
  ++examples_;
  if (ExactMatch(prediction, reference)) ++exact_;
  const std::u32string p = Utf8ToCodePoints(prediction);
  const std::u32string r = Utf8ToCodePoints(reference);
  edits_ += EditDistance(p, r);
  ref_chars_ += static_cast<int64_t>(r.size());
  const FieldCounts f = FieldMatch(prediction, reference);
  fields_.true_positives += f.true_positives;
  fields_.predicted += f.predicted;
  fields_.expected += f.expected;
}

double GenerationMetrics::exact_match() const {
  return examples_ == 0 ? 0.0 : static_cast<double>(exact_) / examples_;
}

double GenerationMetrics::cer() const {
  if (ref_chars_ == 0) return edits_ == 0 ? 0.0 : 1.0;
  return static_cast<double>(edits_) / static_cast<double>(ref_chars_);
}

void LossMetrics::Add(double batch_loss_sum, int64_t batch_tokens,
                      int64_t batch_correct) {
  loss_sum += batch_loss_sum;
  tokens += batch_tokens;
  correct += batch_correct;
}

double LossMetrics::loss() const {
  return tokens == 0 ? 0.0 : loss_sum / static_cast<double>(tokens);
}
double LossMetrics::perplexity() const { return std::exp(loss()); }
double LossMetrics::accuracy() const {
  return tokens == 0
             ? 0.0
             : static_cast<double>(correct) / static_cast<double>(tokens);
}

}  // namespace gemma
