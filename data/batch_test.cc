#include "data/batch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>

#include "data/prefetch.h"
#include "data/test_util.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

class BatchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing_util::MakeTempDir("batch"));
    std::ofstream corpus(*dir_ + "/corpus.txt");
    for (int i = 0; i < 300; ++i)
      corpus << "question " << i << " answer words here and there " << i * 7
             << "\n";
    corpus.close();
    TokenizerTrainOptions o;
    o.input_files = {*dir_ + "/corpus.txt"};
    o.model_path = *dir_ + "/tokenizer.model";
    o.vocab_size = 400;
    ASSERT_TRUE(TrainTokenizer(o).ok());
    auto tok = Tokenizer::Load(o.model_path);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = tok->release();
    cv::Mat img(37, 53, CV_8UC3, cv::Scalar(10, 200, 90));
    cv::circle(img, cv::Point(20, 15), 9, cv::Scalar(255, 0, 0), -1);
    ASSERT_TRUE(cv::imwrite(*dir_ + "/img.png", img));
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete dir_;
  }

  static Conversation Text(int i, int words) {
    Conversation c;
    c.source = "conv" + std::to_string(i);
    std::string q = "question " + std::to_string(i);
    std::string a;
    for (int w = 0; w < words; ++w)
      a += "answer" + std::string(w % 3 == 0 ? " " : " words ");
    ContentPart qp, ap;
    qp.text = q;
    ap.text = a;
    c.messages = {{"user", {qp}}, {"assistant", {ap}}};
    return c;
  }
  static std::vector<Conversation> TextData(int n) {
    std::vector<Conversation> out;
    for (int i = 0; i < n; ++i) out.push_back(Text(i, 1 + (i * 5) % 11));
    return out;
  }
  static Conversation WithImage(int i, const std::string& path) {
    Conversation c = Text(i, 2);
    ContentPart img;
    img.type = ContentPart::Type::kImage;
    img.image_path = path;
    c.messages[0].content.insert(c.messages[0].content.begin(), img);
    return c;
  }

  static std::string* dir_;
  static Tokenizer* tok_;
};
std::string* BatchTest::dir_ = nullptr;
Tokenizer* BatchTest::tok_ = nullptr;

TEST_F(BatchTest, RightPaddingMasksAndPositions) {
  BatchOptions o;
  o.batch_size = 3;
  o.shuffle = false;
  auto loader = DataLoader::Create(TextData(3), tok_, o);
  ASSERT_TRUE(loader.ok()) << loader.status();
  auto b = (*loader)->Next();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->input_ids.size(0), 3);
  const int64_t t = b->input_ids.size(1);
  for (int r = 0; r < 3; ++r) {
    auto enc = EncodeChat(*tok_, Text(r, 1 + (r * 5) % 11), o.chat);
    ASSERT_TRUE(enc.ok());
    const int64_t n = static_cast<int64_t>(enc->input_ids.size());
    EXPECT_EQ(b->attention_mask[r].sum().item<int64_t>(), n);
    for (int64_t i = 0; i < t; ++i) {
      if (i < n) {
        ASSERT_EQ(b->input_ids[r][i].item<int64_t>(), enc->input_ids[i]);
        ASSERT_EQ(b->labels[r][i].item<int64_t>(), enc->labels[i]);
        ASSERT_EQ(b->position_ids[r][i].item<int64_t>(), i);
        ASSERT_EQ(b->segment_ids[r][i].item<int32_t>(), 1);
      } else {
        ASSERT_EQ(b->input_ids[r][i].item<int64_t>(), tok_->special().pad);
        ASSERT_EQ(b->labels[r][i].item<int64_t>(), kIgnoreIndex);
        ASSERT_EQ(b->segment_ids[r][i].item<int32_t>(), 0);
      }
    }
  }
  EXPECT_EQ(b->attention_mask.sum(1).max().item<int64_t>(),
            t);  // padded to the longest row
  EXPECT_EQ(b->pixel_values.size(0), 0);
  EXPECT_EQ(b->num_conversations, 3);

  o.pad_to_multiple = 128;
  loader = DataLoader::Create(TextData(3), tok_, o);
  ASSERT_TRUE(loader.ok());
  b = (*loader)->Next();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->input_ids.size(1), 128);
}

TEST_F(BatchTest, ShuffleIsDeterministicAndResumable) {
  const auto e0 = EpochOrder(10, 42, 0, true);
  EXPECT_EQ(std::set<int64_t>(e0.begin(), e0.end()).size(), 10u);
  EXPECT_EQ(e0, EpochOrder(10, 42, 0, true));
  EXPECT_NE(e0, EpochOrder(10, 42, 1, true));
  EXPECT_NE(e0, EpochOrder(10, 43, 0, true));

  BatchOptions o;
  o.batch_size = 3;
  o.seed = 42;
  auto a = DataLoader::Create(TextData(10), tok_, o);
  ASSERT_TRUE(a.ok());
  std::vector<at::Tensor> seen;
  std::vector<LoaderPosition> positions;
  for (int i = 0; i < 8;
       ++i) {  // 24 conversations: crosses two epoch boundaries
    positions.push_back((*a)->position());
    auto b = (*a)->Next();
    ASSERT_TRUE(b.ok()) << b.status();
    seen.push_back(b->input_ids);
  }
  EXPECT_EQ((*a)->position(), (LoaderPosition{2, 4}));
  // A fresh loader resumed at batch 3's position replays batches 3..7.
  auto b = DataLoader::Create(TextData(10), tok_, o);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->Seek(positions[3]).ok());
  for (int i = 3; i < 8; ++i) {
    auto batch = (*b)->Next();
    ASSERT_TRUE(batch.ok());
    EXPECT_TRUE(torch::equal(batch->input_ids, seen[i])) << "batch " << i;
  }
  EXPECT_FALSE((*b)->Seek({0, 10}).ok());
  // Another seed gives another order.
  o.seed = 7;
  auto c = DataLoader::Create(TextData(10), tok_, o);
  ASSERT_TRUE(c.ok());
  auto first = (*c)->Next();
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->input_ids.sizes() == seen[0].sizes() &&
               torch::equal(first->input_ids, seen[0]));
}

TEST_F(BatchTest, PackingKeepsConversationsApart) {
  BatchOptions o;
  o.batch_size = 2;
  o.seq_len = 96;
  o.pack = true;
  o.shuffle = false;
  const auto data = TextData(12);
  auto loader = DataLoader::Create(data, tok_, o);
  ASSERT_TRUE(loader.ok());
  auto b = (*loader)->Next();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->input_ids.size(0), 2);
  EXPECT_LE(b->input_ids.size(1), 96);
  EXPECT_GT(b->num_conversations, 2);
  // Walk the rows: each segment is exactly one conversation's encoding, in
  // order.
  int conv = 0;
  for (int r = 0; r < 2; ++r) {
    int64_t i = 0;
    const int64_t len = b->attention_mask[r].sum().item<int64_t>();
    int expected_segment = 1;
    while (i < len) {
      auto enc = EncodeChat(*tok_, data[conv], o.chat);
      ASSERT_TRUE(enc.ok());
      for (size_t k = 0; k < enc->input_ids.size(); ++k, ++i) {
        ASSERT_EQ(b->input_ids[r][i].item<int64_t>(), enc->input_ids[k]);
        ASSERT_EQ(b->labels[r][i].item<int64_t>(), enc->labels[k]);
        ASSERT_EQ(b->segment_ids[r][i].item<int32_t>(), expected_segment);
        ASSERT_EQ(b->position_ids[r][i].item<int64_t>(),
                  static_cast<int64_t>(k));
      }
      ++expected_segment;
      ++conv;
    }
  }
  EXPECT_EQ(conv, b->num_conversations);
  EXPECT_EQ((*loader)->position().index,
            conv);  // the next batch starts with the first unused one

  // Conversations with images cannot be packed.
  std::vector<Conversation> mixed = TextData(2);
  mixed.push_back(WithImage(9, *dir_ + "/img.png"));
  o.batch_size = 1;
  o.seq_len = 32;  // one conversation per row
  loader = DataLoader::Create(mixed, tok_, o);
  ASSERT_TRUE(loader.ok());
  absl::Status error;
  for (int i = 0; i < 4 && error.ok(); ++i) error = (*loader)->Next().status();
  EXPECT_THAT(error.message(), HasSubstr("conv9"));
  EXPECT_THAT(error.message(), HasSubstr("packing"));
}

TEST_F(BatchTest, ImagesLoadedInOrder) {
  BatchOptions o;
  o.batch_size = 2;
  o.shuffle = false;
  o.image.image_size = 56;
  o.chat.mm_tokens_per_image = 5;
  Conversation two = WithImage(1, *dir_ + "/img.png");
  ContentPart extra;
  extra.type = ContentPart::Type::kImage;
  extra.image_path = *dir_ + "/img.png";
  two.messages[0].content.push_back(extra);
  auto loader = DataLoader::Create({Text(0, 3), two}, tok_, o);
  ASSERT_TRUE(loader.ok());
  auto b = (*loader)->Next();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->pixel_values.sizes(), (std::vector<int64_t>{2, 3, 56, 56}));
  EXPECT_EQ(b->images_per_row, (std::vector<int>{0, 2}));
  EXPECT_EQ(b->token_type_ids[0].sum().item<int64_t>(), 0);
  EXPECT_EQ(b->token_type_ids[1].sum().item<int64_t>(), 10);
  auto ref = LoadImageTensor(*dir_ + "/img.png", o.image);
  ASSERT_TRUE(ref.ok());
  EXPECT_TRUE(torch::equal(b->pixel_values[0], (*ref)[0]));
  // Image soft tokens are never labels.
  EXPECT_EQ(
      (b->labels == tok_->special().image_soft_token).sum().item<int64_t>(), 0);
}

TEST_F(BatchTest, BadConversationsFailWithSourceOrAreCounted) {
  std::vector<Conversation> data = TextData(3);
  data.push_back(WithImage(7, *dir_ + "/missing.png"));
  data.push_back(Text(8, 200));  // too long for seq_len
  BatchOptions o;
  o.batch_size = 5;
  o.seq_len = 80;
  o.shuffle = false;
  auto loader = DataLoader::Create(data, tok_, o);
  ASSERT_TRUE(loader.ok());
  auto b = (*loader)->Next();
  ASSERT_FALSE(b.ok());
  EXPECT_THAT(b.status().message(), HasSubstr("conv7"));
  EXPECT_THAT(b.status().message(), HasSubstr("missing.png"));

  o.skip_bad = true;
  o.batch_size = 3;
  loader = DataLoader::Create(data, tok_, o);
  ASSERT_TRUE(loader.ok());
  b = (*loader)->Next();
  ASSERT_TRUE(b.ok()) << b.status();
  b = (*loader)->Next();  // skips conv7 and conv8, wraps into epoch 1
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*loader)->skipped(), 2);
  EXPECT_EQ((*loader)->position(), (LoaderPosition{1, 3}));

  // A text-only model: a conversation with an image is a bad example too.
  o.skip_bad = false;
  o.text_only = true;
  loader = DataLoader::Create({Text(0, 2), WithImage(5, *dir_ + "/img.png")},
                              tok_, o);
  ASSERT_TRUE(loader.ok());
  b = (*loader)->Next();
  ASSERT_FALSE(b.ok());
  EXPECT_THAT(b.status().message(), HasSubstr("conv5"));
  EXPECT_THAT(b.status().message(), HasSubstr("text-only"));
  o.text_only = false;
  o.skip_bad = true;

  std::vector<Conversation> all_bad = {Text(8, 200)};
  loader = DataLoader::Create(all_bad, tok_, o);
  ASSERT_TRUE(loader.ok());
  EXPECT_FALSE((*loader)->Next().ok());
  EXPECT_FALSE(DataLoader::Create({}, tok_, o).ok());
}

// The prefetcher gives the loader's stream unchanged, its position is that of
// the last batch handed out (so resuming from it replays the next batch), and
// a loader error arrives in its place in the stream.
TEST_F(BatchTest, PrefetcherGivesTheSameStreamAndResumablePositions) {
  BatchOptions o;
  o.batch_size = 3;
  o.seed = 5;
  auto plain = DataLoader::Create(TextData(10), tok_, o);
  ASSERT_TRUE(plain.ok());
  std::vector<at::Tensor> expect;
  std::vector<LoaderPosition> after;
  for (int i = 0; i < 9; ++i) {
    auto b = (*plain)->Next();
    ASSERT_TRUE(b.ok()) << b.status();
    expect.push_back(b->input_ids);
    after.push_back((*plain)->position());
  }
  auto loader = DataLoader::Create(TextData(10), tok_, o);
  ASSERT_TRUE(loader.ok());
  {
    BatchPrefetcher pre(std::move(*loader), /*depth=*/3);
    for (int i = 0; i < 5; ++i) {
      auto b = pre.Next();
      ASSERT_TRUE(b.ok()) << b.status();
      EXPECT_TRUE(torch::equal(b->input_ids, expect[i])) << "batch " << i;
      EXPECT_EQ(pre.position(), after[i]) << "batch " << i;
    }
    // Resume from the prefetcher's position in a fresh prefetched loader.
    auto again = DataLoader::Create(TextData(10), tok_, o);
    ASSERT_TRUE(again.ok());
    ASSERT_TRUE((*again)->Seek(pre.position()).ok());
    BatchPrefetcher resumed(std::move(*again), 2);
    for (int i = 5; i < 9; ++i) {
      auto b = resumed.Next();
      ASSERT_TRUE(b.ok()) << b.status();
      EXPECT_TRUE(torch::equal(b->input_ids, expect[i])) << "batch " << i;
    }
  }  // destroyed with batches still prepared ahead: no hang

  std::vector<Conversation> data = TextData(3);
  data.push_back(WithImage(7, *dir_ + "/missing.png"));
  o.shuffle = false;
  o.batch_size = 2;
  auto bad = DataLoader::Create(data, tok_, o);
  ASSERT_TRUE(bad.ok());
  BatchPrefetcher pre(std::move(*bad), 4);
  ASSERT_TRUE(pre.Next().ok());
  auto err = pre.Next();
  ASSERT_FALSE(err.ok());
  EXPECT_THAT(err.status().message(), HasSubstr("missing.png"));
  EXPECT_EQ(pre.position(), (LoaderPosition{0, 2}));
  EXPECT_FALSE(pre.Next().ok());
}

}  // namespace
}  // namespace gemma
