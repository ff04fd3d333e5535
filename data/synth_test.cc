#include "data/synth.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

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

TEST(SynthTest, RefusesANonEmptyFolder) {
  const std::string base = testing_util::MakeTempDir("synth_exists");
  testing_util::WriteFile(base + "/keep.txt", "x");
  const absl::Status s = WriteSyntheticOcrDataset(Options(base, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadFileOrDie(base + "/keep.txt"), "x");
}

}  // namespace
}  // namespace gemma
