#include "data/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "data/test_util.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

std::string TrainSmall(const std::string& dir) {
  const std::string corpus = dir + "/corpus.txt";
  std::ofstream out(corpus);
  for (int i = 0; i < 400; ++i) {
    out << "store " << i % 17 << " total " << (i * 37) % 1000 << ".5" << i % 10
        << " coffee tea milk receipt\n";
  }
  out.close();
  TokenizerTrainOptions o;
  o.input_files = {corpus};
  o.model_path = dir + "/tokenizer.model";
  o.vocab_size = 400;
  o.extra_user_defined_pieces = {"<s_total>", "</s_total>"};
  const absl::Status s = TrainTokenizer(o);
  EXPECT_TRUE(s.ok()) << s;
  return o.model_path;
}

TEST(TokenizerTest, TrainedModelHasGemmaSpecialsAndRoundTrips) {
  const std::string dir = testing_util::MakeTempDir("tok");
  auto tok = Tokenizer::Load(TrainSmall(dir));
  ASSERT_TRUE(tok.ok()) << tok.status();
  const SpecialTokenIds& s = (*tok)->special();
  EXPECT_EQ(s.pad, 0);
  EXPECT_EQ(s.eos, 1);
  EXPECT_EQ(s.bos, 2);
  EXPECT_EQ(s.unk, 3);
  EXPECT_EQ((*tok)->PieceToId("<mask>"), 4);
  EXPECT_EQ(s.start_of_turn, 5);
  EXPECT_EQ(s.end_of_turn, 6);
  EXPECT_EQ(s.start_of_image, 7);
  EXPECT_EQ(s.end_of_image, 8);
  EXPECT_EQ(s.image_soft_token, 9);
  EXPECT_EQ((*tok)->PieceToId("<s_total>"), 10);
  EXPECT_EQ((*tok)->PieceToId("no such piece"), -1);

  const std::string text =
      "store 12 total 3.50 <s_total>9</s_total> café\nnew line";
  std::vector<int> begins;
  auto ids = (*tok)->Encode(text, &begins);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(begins.size(), ids->size());
  EXPECT_EQ(begins.front(), 0);
  EXPECT_TRUE(std::is_sorted(begins.begin(), begins.end()));
  auto back = (*tok)->Decode(*ids);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, text);
  // Digits are split; a user-defined piece stays whole; control pieces
  // written in the text become their ids.
  auto digits = (*tok)->Encode("1234");
  ASSERT_TRUE(digits.ok());
  EXPECT_EQ(digits->size(), 4u);
  auto specials = (*tok)->Encode("<bos>a<s_total><eos>");
  ASSERT_TRUE(specials.ok());
  EXPECT_EQ(specials->front(), s.bos);
  EXPECT_EQ(specials->back(), s.eos);
  EXPECT_EQ((*specials)[specials->size() - 2], 10);
}

TEST(TokenizerTest, ErrorsNameThePath) {
  auto missing = Tokenizer::Load("/no/such/tokenizer.model");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              HasSubstr("/no/such/tokenizer.model"));
  const std::string dir = testing_util::MakeTempDir("tok_bad");
  testing_util::WriteFile(dir + "/bad.model", "this is not a protobuf");
  auto bad = Tokenizer::Load(dir + "/bad.model");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr(dir + "/bad.model"));
  TokenizerTrainOptions o;
  o.input_files = {dir + "/missing.txt"};
  o.model_path = dir + "/x.model";
  EXPECT_EQ(TrainTokenizer(o).code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace gemma
