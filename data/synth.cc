#include "data/synth.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "data/dataset.h"
#include "data/tokenizer.h"

namespace gemma {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kStores[] = {"CORNER CAFE",  "FRESH MART",  "BOOK NOOK",
                                   "GREEN GROCER", "CITY BAKERY", "NOODLE BAR",
                                   "SUNNY DELI",   "HARBOR FISH"};
constexpr const char* kItems[] = {
    "COFFEE", "TEA",   "MILK",    "BREAD",    "BAGEL", "MUFFIN", "SALAD",
    "SOUP",   "JUICE", "COOKIE",  "RICE",     "EGGS",  "APPLE",  "BANANA",
    "CHEESE", "WATER", "NOODLES", "SANDWICH", "CAKE",  "PIE"};

// The easy level's stores: 4 letters, one per cell of the top row.
constexpr const char* kEasyStores[] = {"CAFE", "DELI", "MART", "SHOP",
                                       "FISH", "TACO", "WINE", "BOOK"};
constexpr int kEasyGrid = 4;     // cells per side
constexpr int kEasyItems = 2;    // menu rows
constexpr int kEasyCounts = 9;   // 1..9
constexpr int kEasyPrices = 90;  // 10..99

// Deterministic generator (splitmix64), independent of the standard library.
class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream)
      : state_(seed * 0x9E3779B97F4A7C15ull + stream * 0xBF58476D1CE4E5B9ull +
               1) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int Uniform(int lo, int hi) {
    return lo + static_cast<int>(Next() % static_cast<uint64_t>(hi - lo + 1));
  }

 private:
  uint64_t state_;
};

// A pseudorandom permutation of [0, n) keyed by `seed`: a 4-round Feistel
// network over the smallest even number of bits that covers n, walking the
// cycle until the value is back in range (a bijection of [0, n) still).
uint64_t Permute(uint64_t x, uint64_t n, uint64_t seed) {
  int bits = 2;
  while ((uint64_t{1} << bits) < n) bits += 2;
  const int half = bits / 2;
  const uint64_t mask = (uint64_t{1} << half) - 1;
  do {
    uint64_t l = x >> half, r = x & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = Rng(seed, ((round + 1) << 40) ^ r).Next() & mask;
      const uint64_t next = l ^ f;
      l = r;
      r = next;
    }
    x = (l << half) | r;
  } while (x >= n);
  return x;
}

json EasyGroundTruth(uint64_t seed, int index) {
  uint64_t v = Permute(static_cast<uint64_t>(index),
                       static_cast<uint64_t>(SynthEasyReceiptCount()), seed);
  auto take = [&v](int k) {
    const int d = static_cast<int>(v % static_cast<uint64_t>(k));
    v /= static_cast<uint64_t>(k);
    return d;
  };
  json gt;
  gt["store"] = {{"nm", kEasyStores[take(std::size(kEasyStores))]}};
  json menu = json::array();
  int total = 0;
  for (int i = 0; i < kEasyItems; ++i) {
    const int count = 1 + take(kEasyCounts);
    const int price = 10 + take(kEasyPrices);
    total += price;
    menu.push_back(
        {{"cnt", std::to_string(count)}, {"price", std::to_string(price)}});
  }
  gt["menu"] = menu;
  gt["total"] = {{"total_price", std::to_string(total)}};
  return gt;
}

// One glyph drawn black on white, cropped to its ink: about 60% of `cell`
// pixels high, and a blank pixel at least left on every side of the cell.
cv::Mat EasyGlyph(char ch, int cell) {
  const int font = cv::FONT_HERSHEY_SIMPLEX;
  const std::string text(1, ch);
  const int thick = std::max(1, cell / 12);
  int base = 0;
  const cv::Size unit = cv::getTextSize(text, font, 1.0, thick, &base);
  const cv::Size digit = cv::getTextSize("0", font, 1.0, thick, &base);
  const double scale = std::min(0.65 * cell / digit.height,
                                0.75 * cell / std::max(1, unit.width));
  cv::Mat canvas(3 * cell, 3 * cell, CV_8UC1, cv::Scalar(255));
  cv::putText(canvas, text, cv::Point(cell, 2 * cell), font, scale,
              cv::Scalar(0), thick, cv::LINE_AA);
  std::vector<cv::Point> ink;
  cv::findNonZero(canvas < 255, ink);
  cv::Mat glyph = canvas(cv::boundingRect(ink)).clone();
  const int room = cell - 2;
  if (glyph.cols > room || glyph.rows > room) {  // a wide W at a small cell
    const double f = std::min(static_cast<double>(room) / glyph.cols,
                              static_cast<double>(room) / glyph.rows);
    cv::resize(glyph, glyph,
               cv::Size(std::max(1, static_cast<int>(glyph.cols * f)),
                        std::max(1, static_cast<int>(glyph.rows * f))),
               0, 0, cv::INTER_AREA);
  }
  return glyph;
}

// The easy receipt: one glyph per cell of a kEasyGrid x kEasyGrid grid, its
// ink centred, black on white; rows: store, the items as "CxPP", the total.
cv::Mat RenderEasyReceipt(const json& gt, int size) {
  std::vector<std::string> rows = {gt["store"]["nm"].get<std::string>()};
  for (const json& item : gt["menu"]) {
    rows.push_back(absl::StrCat(item["cnt"].get<std::string>(), "x",
                                item["price"].get<std::string>()));
  }
  rows.push_back(gt["total"]["total_price"].get<std::string>());
  cv::Mat gray(size, size, CV_8UC1, cv::Scalar(255));
  const int cell = size / kEasyGrid;
  const int margin = (size - kEasyGrid * cell) / 2;
  for (size_t r = 0; r < rows.size(); ++r) {
    for (size_t c = 0; c < rows[r].size(); ++c) {
      const cv::Mat glyph = EasyGlyph(rows[r][c], cell);
      const cv::Rect at(
          margin + static_cast<int>(c) * cell + (cell - glyph.cols) / 2,
          margin + static_cast<int>(r) * cell + (cell - glyph.rows) / 2,
          glyph.cols, glyph.rows);
      glyph.copyTo(gray(at));
    }
  }
  cv::Mat img;
  cv::cvtColor(gray, img, cv::COLOR_GRAY2BGR);
  return img;
}

std::string Money(int cents) {
  return absl::StrFormat("%d.%02d", cents / 100, cents % 100);
}

// Draws the receipt; text lines scaled to the canvas.
cv::Mat RenderReceipt(const json& gt, int size, uint64_t seed, int index) {
  Rng rng(seed, 1000003ull + static_cast<uint64_t>(index));
  cv::Mat img(size, size, CV_8UC3, cv::Scalar(255, 255, 255));
  const double scale = size / 896.0;
  const int font = cv::FONT_HERSHEY_SIMPLEX;
  const int left = static_cast<int>((60 + rng.Uniform(0, 40)) * scale);
  const int right = size - static_cast<int>((60 + rng.Uniform(0, 40)) * scale);
  const int line_h = static_cast<int>(58 * scale);
  const int thick = std::max(1, static_cast<int>(2 * scale));
  const cv::Scalar ink(20, 20, 20);
  int y = static_cast<int>((90 + rng.Uniform(0, 30)) * scale);
  auto text = [&](const std::string& s, int x, double fs, int t) {
    cv::putText(img, s, cv::Point(x, y), font, fs * scale, ink, t, cv::LINE_AA);
  };
  auto right_text = [&](const std::string& s, double fs) {
    int base = 0;
    const cv::Size sz = cv::getTextSize(s, font, fs * scale, thick, &base);
    text(s, right - sz.width, fs, thick);
  };
  const std::string store = gt["store"]["nm"];
  int base = 0;
  const cv::Size store_size =
      cv::getTextSize(store, font, 1.6 * scale, thick + 1, &base);
  text(store, (size - store_size.width) / 2, 1.6, thick + 1);
  y += line_h;
  text(gt["date"].get<std::string>(), left, 1.0, thick);
  y += line_h / 2;
  cv::line(img, cv::Point(left, y), cv::Point(right, y), ink, thick);
  y += line_h;
  for (const json& item : gt["menu"]) {
    text(absl::StrCat(item["cnt"].get<std::string>(), " x ",
                      item["nm"].get<std::string>()),
         left, 1.0, thick);
    right_text(item["price"].get<std::string>(), 1.0);
    y += line_h;
  }
  y -= line_h / 2;
  cv::line(img, cv::Point(left, y), cv::Point(right, y), ink, thick);
  y += line_h;
  text("TOTAL", left, 1.2, thick + 1);
  right_text(gt["total"]["total_price"].get<std::string>(), 1.2);
  return img;
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out)
    return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

}  // namespace

std::string_view SynthLevelName(SynthLevel level) {
  return level == SynthLevel::kEasy ? "easy" : "full";
}

absl::StatusOr<SynthLevel> ParseSynthLevel(std::string_view name) {
  if (name == "full") return SynthLevel::kFull;
  if (name == "easy") return SynthLevel::kEasy;
  return absl::InvalidArgumentError(absl::StrCat(
      "synth: level must be easy or full, not '", std::string(name), "'"));
}

int64_t SynthEasyReceiptCount() {
  const int64_t item = int64_t{kEasyCounts} * kEasyPrices;
  int64_t n = static_cast<int64_t>(std::size(kEasyStores));
  for (int i = 0; i < kEasyItems; ++i) n *= item;
  return n;
}

json SynthReceiptGroundTruth(uint64_t seed, int index, SynthLevel level) {
  if (level == SynthLevel::kEasy) return EasyGroundTruth(seed, index);
  Rng rng(seed, static_cast<uint64_t>(index));
  json gt;
  gt["store"] = {{"nm", kStores[rng.Uniform(0, std::size(kStores) - 1)]}};
  gt["date"] = absl::StrFormat("%04d-%02d-%02d", rng.Uniform(2019, 2026),
                               rng.Uniform(1, 12), rng.Uniform(1, 28));
  const int n = rng.Uniform(1, 5);
  int total = 0;
  json menu = json::array();
  std::set<int> used;
  for (int i = 0; i < n; ++i) {
    int which = rng.Uniform(0, std::size(kItems) - 1);
    while (used.count(which))
      which = (which + 1) % static_cast<int>(std::size(kItems));
    used.insert(which);
    const int count = rng.Uniform(1, 3);
    const int unit = rng.Uniform(50, 1500);
    total += count * unit;
    menu.push_back({{"nm", kItems[which]},
                    {"cnt", std::to_string(count)},
                    {"price", Money(count * unit)}});
  }
  gt["menu"] = menu;
  gt["total"] = {{"total_price", Money(total)}};
  return gt;
}

absl::Status WriteSyntheticOcrDataset(const SynthOcrOptions& options) {
  if (options.out_dir.empty())
    return absl::InvalidArgumentError("synth: out_dir is empty");
  if (options.num_examples < 1)
    return absl::InvalidArgumentError("synth: num_examples must be >= 1");
  if (options.image_size < 64)
    return absl::InvalidArgumentError("synth: image_size must be >= 64");
  if (options.level == SynthLevel::kEasy &&
      options.num_examples > SynthEasyReceiptCount()) {
    return absl::InvalidArgumentError(
        absl::StrCat("synth: the easy level has ", SynthEasyReceiptCount(),
                     " different receipts, fewer than num_examples"));
  }
  const fs::path out(options.out_dir);
  std::error_code ec;
  if (fs::exists(out) && !(fs::is_directory(out) && fs::is_empty(out))) {
    return absl::AlreadyExistsError(absl::StrCat(
        "synth: ", options.out_dir, " exists and is not an empty folder"));
  }
  const fs::path tmp = out.string() + absl::StrCat(".tmp", getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp / "images", ec);
  if (ec)
    return absl::InternalError(absl::StrCat("synth: cannot create ",
                                            tmp.string(), ": ", ec.message()));

  std::string train, metadata, corpus;
  std::set<std::string> tags;
  for (int i = 0; i < options.num_examples; ++i) {
    const json gt = SynthReceiptGroundTruth(options.seed, i, options.level);
    const std::string name = absl::StrFormat("images/%06d.png", i);
    const cv::Mat bgr =
        options.level == SynthLevel::kEasy
            ? RenderEasyReceipt(gt, options.image_size)
            : RenderReceipt(gt, options.image_size, options.seed, i);
    if (!cv::imwrite((tmp / name).string(), bgr)) {
      return absl::InternalError(
          absl::StrCat("synth: cannot write ", (tmp / name).string()));
    }
    const std::string target = CordTarget(gt);
    const json line = {
        {"messages",
         {{{"role", "user"},
           {"content",
            {{{"type", "image"}, {"path", name}},
             {{"type", "text"}, {"text", kCordPrompt}}}}},
          {{"role", "assistant"},
           {"content", {{{"type", "text"}, {"text", target}}}}}}}};
    absl::StrAppend(&train, line.dump(), "\n");
    absl::StrAppend(&metadata,
                    json{{"file_name", name},
                         {"ground_truth", json{{"gt_parse", gt}}.dump()}}
                        .dump(),
                    "\n");
    absl::StrAppend(&corpus, target, "\n", kCordPrompt, "\n");
    for (const std::string& t : CordTagPieces(gt)) tags.insert(t);
    if (options.progress) options.progress(i + 1, options.num_examples);
  }
  GEMMA_RETURN_IF_ERROR(WriteText(tmp / "train.jsonl", train));
  GEMMA_RETURN_IF_ERROR(WriteText(tmp / "metadata.jsonl", metadata));
  if (options.train_tokenizer) {
    // Words and numbers the chat format and the receipts use, so the model
    // has pieces for them besides the byte fallback.
    absl::StrAppend(&corpus, "user\nmodel\n");
    for (const char* s : kStores) absl::StrAppend(&corpus, s, "\n");
    for (const char* s : kItems) absl::StrAppend(&corpus, s, "\n");
    if (options.level == SynthLevel::kEasy) {
      for (const char* s : kEasyStores) absl::StrAppend(&corpus, s, "\n");
    }
    const fs::path corpus_path = tmp / "tokenizer_corpus.txt";
    GEMMA_RETURN_IF_ERROR(WriteText(corpus_path, corpus));
    TokenizerTrainOptions t;
    t.input_files = {corpus_path.string()};
    t.model_path = (tmp / "tokenizer.model").string();
    t.vocab_size = options.vocab_size;
    t.extra_user_defined_pieces.assign(tags.begin(), tags.end());
    GEMMA_RETURN_IF_ERROR(TrainTokenizer(t));
    fs::remove(corpus_path, ec);
  }
  if (fs::exists(out)) fs::remove(out, ec);  // the empty folder
  fs::rename(tmp, out, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("synth: cannot move ", tmp.string(),
                                            " to ", options.out_dir));
  return absl::OkStatus();
}

}  // namespace gemma
