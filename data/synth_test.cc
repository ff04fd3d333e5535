#include "data/synth.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <set>
#include <string>
#include <vector>

#include "data/chat.h"
#include "data/dataset.h"
#include "data/test_util.h"
#include "data/tokenizer.h"

namespace gemma {
namespace {

using testing_util::ReadFileOrDie;

SynthOcrOptions Options(const std::string& dir, uint64_t seed) {
  SynthOcrOptions o;
  o.out_dir = dir;
  o.num_examples = 12;
  o.seed = seed;
  o.image_size = 224;
  o.vocab_size = 500;
  return o;
}

TEST(SynthTest, WritesAConsistentDeterministicDataset) {
  const std::string base = testing_util::MakeTempDir("synth");
  int last_progress = 0;
  SynthOcrOptions o = Options(base + "/a", 5);
  o.progress = [&](int done, int total) {
    EXPECT_EQ(total, 12);
    EXPECT_EQ(done, last_progress + 1);
    last_progress = done;
  };
  ASSERT_TRUE(WriteSyntheticOcrDataset(o).ok());
  EXPECT_EQ(last_progress, 12);
  ASSERT_TRUE(WriteSyntheticOcrDataset(Options(base + "/b", 5)).ok());
  ASSERT_TRUE(WriteSyntheticOcrDataset(Options(base + "/c", 6)).ok());

  // Same seed, same bytes; another seed, other data.
  for (const char* f : {"train.jsonl", "metadata.jsonl", "images/000000.png",
                        "images/000011.png"}) {
    EXPECT_TRUE(ReadFileOrDie(base + "/a/" + f) ==
                ReadFileOrDie(base + "/b/" + f))
        << f;
  }
  {
    // The model file records its training paths; the vocabulary must agree.
    auto ta = Tokenizer::Load(base + "/a/tokenizer.model");
    auto tb = Tokenizer::Load(base + "/b/tokenizer.model");
    ASSERT_TRUE(ta.ok() && tb.ok());
    ASSERT_EQ((*ta)->vocab_size(), (*tb)->vocab_size());
    for (int id = 0; id < (*ta)->vocab_size(); ++id)
      EXPECT_EQ((*ta)->IdToPiece(id), (*tb)->IdToPiece(id));
  }
  EXPECT_TRUE(ReadFileOrDie(base + "/a/train.jsonl") !=
              ReadFileOrDie(base + "/c/train.jsonl"));
  EXPECT_FALSE(std::filesystem::exists(base + "/a/tokenizer_corpus.txt"));

  // train.jsonl and metadata.jsonl describe the same receipts.
  auto train = ReadJsonlConversations(base + "/a/train.jsonl");
  ASSERT_TRUE(train.ok()) << train.status();
  auto cord = ReadDataset(base + "/a");  // a folder: the CORD layout
  ASSERT_TRUE(cord.ok()) << cord.status();
  ASSERT_EQ(train->size(), 12u);
  ASSERT_EQ(cord->size(), 12u);
  for (size_t i = 0; i < 12; ++i) {
    EXPECT_EQ((*train)[i].image_paths(), (*cord)[i].image_paths());
    EXPECT_EQ((*train)[i].messages[1].content[0].text,
              (*cord)[i].messages[1].content[0].text);
    EXPECT_EQ((*train)[i].messages[1].content[0].text,
              CordTarget(SynthReceiptGroundTruth(5, static_cast<int>(i))));
  }
  const nlohmann::json gt = SynthReceiptGroundTruth(5, 3);
  EXPECT_TRUE(gt.contains("store") && gt.contains("date") &&
              gt.contains("menu") && gt.contains("total"));

  // Images: the requested size, not blank.
  const cv::Mat img =
      cv::imread(base + "/a/images/000003.png", cv::IMREAD_COLOR);
  ASSERT_FALSE(img.empty());
  EXPECT_EQ(img.rows, 224);
  EXPECT_EQ(img.cols, 224);
  double min_v = 0, max_v = 0;
  cv::minMaxLoc(img.reshape(1), &min_v, &max_v);
  EXPECT_LT(min_v, 100);
  EXPECT_EQ(max_v, 255);

  // The tokenizer: Gemma specials, the tags as single pieces, round trips.
  auto tok = Tokenizer::Load(base + "/a/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->special().image_soft_token, 9);
  EXPECT_GE((*tok)->PieceToId("<s_total_price>"), 10);
  auto enc = EncodeChat(**tok, (*train)[0], ChatOptions{});
  ASSERT_TRUE(enc.ok()) << enc.status();
  std::vector<int> target;
  for (int l : enc->labels) {
    if (l != kIgnoreIndex) target.push_back(l);
  }
  target.pop_back();  // <end_of_turn>
  auto text = (*tok)->Decode(target);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, (*train)[0].messages[1].content[0].text);
}

// The tokenizer our trainer writes is one Hugging Face's GemmaTokenizer
// reads and encodes identically (the HF reference model side of an OCR
// fine-tuning test uses it).
TEST(SynthTest, TrainedTokenizerMatchesHuggingFace) {
  const std::string base = testing_util::MakeTempDir("synth_hf");
  ASSERT_TRUE(WriteSyntheticOcrDataset(Options(base + "/ds", 11)).ok());
  auto tok = Tokenizer::Load(base + "/ds/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto train = ReadJsonlConversations(base + "/ds/train.jsonl");
  ASSERT_TRUE(train.ok()) << train.status();
  nlohmann::json texts = nlohmann::json::array();
  for (const Conversation& c : *train) {
    auto rendered = RenderChat(c, ChatOptions{});
    ASSERT_TRUE(rendered.ok());
    texts.push_back(rendered->text);
  }
  texts.push_back(
      "unseen words: Zürich 2031-12-31 <s_total>99.99</s_total>\n\n x");
  testing_util::WriteFile(base + "/texts.json", texts.dump());
  ASSERT_EQ(testing_util::RunParityScript(
                "encode_reference.py", base + "/ds/tokenizer.model " + base +
                                           "/texts.json " + base + "/ids.json"),
            0);
  const auto ref = nlohmann::json::parse(ReadFileOrDie(base + "/ids.json"));
  ASSERT_EQ(ref.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    auto ids = (*tok)->Encode(texts[i].get<std::string>());
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, ref[i].get<std::vector<int>>()) << texts[i];
  }
}

TEST(SynthTest, LevelNames) {
  EXPECT_EQ(*ParseSynthLevel("full"), SynthLevel::kFull);
  EXPECT_EQ(*ParseSynthLevel("easy"), SynthLevel::kEasy);
  EXPECT_EQ(SynthLevelName(SynthLevel::kEasy), "easy");
  EXPECT_EQ(SynthLevelName(SynthLevel::kFull), "full");
  EXPECT_EQ(ParseSynthLevel("hard").status().code(),
            absl::StatusCode::kInvalidArgument);
  // The default is the full receipt.
  EXPECT_EQ(SynthOcrOptions{}.level, SynthLevel::kFull);
  EXPECT_EQ(SynthReceiptGroundTruth(5, 3),
            SynthReceiptGroundTruth(5, 3, SynthLevel::kFull));
}

// What an easy receipt says: a store of 4 letters, 2 items of count 1-9 and
// line price 10-99, their total.
TEST(SynthTest, EasyReceiptsHoldShortValues) {
  std::set<std::string> stores;
  for (int i = 0; i < 200; ++i) {
    const nlohmann::json gt = SynthReceiptGroundTruth(7, i, SynthLevel::kEasy);
    ASSERT_EQ(gt.size(), 3u) << gt;
    const std::string store = gt["store"]["nm"];
    EXPECT_EQ(store.size(), 4u) << gt;
    stores.insert(store);
    ASSERT_EQ(gt["menu"].size(), 2u) << gt;
    int sum = 0;
    for (const nlohmann::json& item : gt["menu"]) {
      ASSERT_EQ(item.size(), 2u) << gt;
      const int cnt = std::stoi(item["cnt"].get<std::string>());
      const int price = std::stoi(item["price"].get<std::string>());
      EXPECT_TRUE(cnt >= 1 && cnt <= 9) << gt;
      EXPECT_TRUE(price >= 10 && price <= 99) << gt;
      sum += price;
    }
    EXPECT_EQ(gt["total"]["total_price"], std::to_string(sum)) << gt;
  }
  EXPECT_EQ(stores.size(), 8u);
  EXPECT_EQ(SynthEasyReceiptCount(), 8 * 9 * 90 * 9 * 90);
}

// No two receipts of an easy data set are the same, so held-out receipts are
// never training ones; another seed orders them differently.
TEST(SynthTest, EasyReceiptsAreAllDifferent) {
  std::set<std::string> seen;
  int same_as_other_seed = 0;
  for (int i = 0; i < 20000; ++i) {
    const std::string t =
        CordTarget(SynthReceiptGroundTruth(3, i, SynthLevel::kEasy));
    EXPECT_TRUE(seen.insert(t).second) << "receipt " << i << " repeats " << t;
    same_as_other_seed +=
        t == CordTarget(SynthReceiptGroundTruth(4, i, SynthLevel::kEasy));
  }
  EXPECT_LT(same_as_other_seed, 3);
}

// The easy images: one glyph per cell of a 4 x 4 grid at fixed places, so a
// cell's pixels are a function of its character alone; nothing crosses a
// cell's border (a patch of a quarter of the image holds one glyph).
TEST(SynthTest, EasyImagesDrawOneGlyphPerCell) {
  const std::string base = testing_util::MakeTempDir("synth_easy");
  SynthOcrOptions o = Options(base + "/ds", 9);
  o.level = SynthLevel::kEasy;
  o.num_examples = 30;
  o.image_size = 64;
  ASSERT_TRUE(WriteSyntheticOcrDataset(o).ok());
  auto train = ReadJsonlConversations(base + "/ds/train.jsonl");
  ASSERT_TRUE(train.ok()) << train.status();
  ASSERT_EQ(train->size(), 30u);
  const int cell = 16;
  // The characters of each cell, as the receipt's ground truth lays them out.
  auto layout = [](const nlohmann::json& gt) {
    std::vector<std::string> rows = {gt["store"]["nm"].get<std::string>()};
    for (const nlohmann::json& item : gt["menu"]) {
      rows.push_back(item["cnt"].get<std::string>() + "x" +
                     item["price"].get<std::string>());
    }
    rows.push_back(gt["total"]["total_price"].get<std::string>());
    std::vector<char> cells(16, ' ');
    for (size_t r = 0; r < rows.size(); ++r) {
      for (size_t c = 0; c < rows[r].size(); ++c) cells[r * 4 + c] = rows[r][c];
    }
    return cells;
  };
  std::vector<cv::Mat> images;
  std::vector<std::vector<char>> cells;
  for (int i = 0; i < 30; ++i) {
    const nlohmann::json gt = SynthReceiptGroundTruth(9, i, SynthLevel::kEasy);
    EXPECT_EQ((*train)[i].messages[1].content[0].text, CordTarget(gt));
    EXPECT_EQ((*train)[i].messages[0].content[1].text, kCordPrompt);
    cv::Mat img =
        cv::imread((*train)[i].image_paths()[0], cv::IMREAD_GRAYSCALE);
    ASSERT_EQ(img.rows, 64);
    ASSERT_EQ(img.cols, 64);
    images.push_back(img);
    cells.push_back(layout(gt));
    for (int k = 0; k < 64; ++k) {  // the borders between cells are blank
      for (int b = 0; b < 64; b += cell) {
        ASSERT_EQ(img.at<uint8_t>(k, b), 255) << i << " " << k << " " << b;
        ASSERT_EQ(img.at<uint8_t>(b, k), 255) << i << " " << b << " " << k;
      }
    }
  }
  for (int i = 0; i < 30; ++i) {
    for (int c = 0; c < 16; ++c) {
      const cv::Rect rect((c % 4) * cell, (c / 4) * cell, cell, cell);
      const cv::Mat a = images[i](rect);
      double min_v = 0, max_v = 0;
      cv::minMaxLoc(a, &min_v, &max_v);
      if (cells[i][c] == ' ') {
        EXPECT_EQ(min_v, 255) << "receipt " << i << " cell " << c;
      } else {
        EXPECT_LT(min_v, 60) << "receipt " << i << " cell " << c;  // black ink
      }
      for (int j = 0; j < i; ++j) {
        const bool same_pixels = cv::countNonZero(a != images[j](rect)) == 0;
        EXPECT_EQ(same_pixels, cells[i][c] == cells[j][c])
            << "receipts " << i << ", " << j << " cell " << c << " '"
            << cells[i][c] << "' '" << cells[j][c] << "'";
      }
    }
  }
  // The tokenizer has the stores; the digits are pieces of their own.
  auto tok = Tokenizer::Load(base + "/ds/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("<s_price>47</s_price>");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->size(), 4u);  // the tags and one piece per digit
}

TEST(SynthTest, RefusesANonEmptyFolder) {
  const std::string base = testing_util::MakeTempDir("synth_exists");
  testing_util::WriteFile(base + "/keep.txt", "x");
  const absl::Status s = WriteSyntheticOcrDataset(Options(base, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadFileOrDie(base + "/keep.txt"), "x");
}

}  // namespace
}  // namespace gemma
