// Gemma 4 conversations -> token ids, labels and batches, against
// transformers 5.17's Gemma4Processor: tests/data_parity/
// gemma4_chat_reference.py builds a tiny Gemma 4 tokenizer, renders test
// conversations (system turn, multi-turn, two images of different aspect
// ratios) and writes HF's input_ids, mm_token_type_ids, pixel_values and
// image_position_ids, one conversation at a time and as one batch.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>

#include "data/batch.h"
#include "data/chat.h"
#include "data/dataset.h"
#include "data/test_util.h"
#include "data/tokenizer.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

// Raw little-endian values written by numpy's tofile.
template <typename T>
std::vector<T> ReadRaw(const std::string& path) {
  const std::string bytes = testing_util::ReadFileOrDie(path);
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

template <typename T>
std::vector<T> Flat(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::vector<T>(c.data_ptr<T>(), c.data_ptr<T>() + c.numel());
}

std::vector<int> Ints(const at::Tensor& row, int64_t n) {
  std::vector<int> out;
  for (int64_t v : Flat<int64_t>(row.narrow(0, 0, n)))
    out.push_back(static_cast<int>(v));
  return out;
}

ChatImageInfo Soft(int n) {
  ChatImageInfo info;
  info.soft_tokens = n;
  return info;
}

class Gemma4ChatTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing_util::MakeTempDir("gemma4_chat"));
    ASSERT_EQ(testing_util::RunParityScript("gemma4_chat_reference.py", *dir_),
              0);
    auto tok = Tokenizer::Load(*dir_ + "/tokenizer.model");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = tok->release();
    auto convs = ReadJsonlConversations(*dir_ + "/conversations.jsonl");
    ASSERT_TRUE(convs.ok()) << convs.status();
    convs_ = new std::vector<Conversation>(*std::move(convs));
    ref_ = new nlohmann::json(nlohmann::json::parse(
        testing_util::ReadFileOrDie(*dir_ + "/reference.json")));
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete convs_;
    delete ref_;
    delete dir_;
  }

  static Gemma4ImageOptions ImageOptions() {
    Gemma4ImageOptions o;
    o.max_soft_tokens = (*ref_)["conversations"][0]["max_soft_tokens"];
    return o;
  }
  static BatchOptions Gemma4Batches(int batch_size) {
    BatchOptions o;
    o.batch_size = batch_size;
    o.seq_len = 512;
    o.shuffle = false;
    o.chat.format = ChatFormat::kGemma4;
    o.gemma4_image = ImageOptions();
    return o;
  }

  static std::string* dir_;
  static Tokenizer* tok_;
  static std::vector<Conversation>* convs_;
  static nlohmann::json* ref_;
};
std::string* Gemma4ChatTest::dir_ = nullptr;
Tokenizer* Gemma4ChatTest::tok_ = nullptr;
std::vector<Conversation>* Gemma4ChatTest::convs_ = nullptr;
nlohmann::json* Gemma4ChatTest::ref_ = nullptr;

TEST_F(Gemma4ChatTest, TextIdsTypesAndLabelsMatchHuggingFace) {
  const nlohmann::json& refs = (*ref_)["conversations"];
  ASSERT_EQ(convs_->size(), refs.size());
  ASSERT_GE(refs.size(), 5u);
  int with_images = 0;
  for (size_t i = 0; i < refs.size(); ++i) {
    SCOPED_TRACE("conversation " + std::to_string(i));
    const nlohmann::json& ref = refs[i];
    const Conversation& conv = (*convs_)[i];
    ChatOptions options;
    options.format = ChatFormat::kGemma4;
    options.add_generation_prompt = ref["add_generation_prompt"];
    std::vector<ChatImageInfo> images;
    for (int n : ref["num_soft_tokens"].get<std::vector<int>>())
      images.push_back(Soft(n));
    auto rendered = RenderChat(conv, options, images);
    ASSERT_TRUE(rendered.ok()) << rendered.status();
    EXPECT_EQ(rendered->text, ref["text"].get<std::string>());
    auto enc = EncodeChat(*tok_, conv, options, images);
    ASSERT_TRUE(enc.ok()) << enc.status();
    EXPECT_EQ(enc->input_ids, ref["input_ids"].get<std::vector<int>>());
    EXPECT_EQ(enc->token_type_ids,
              ref["mm_token_type_ids"].get<std::vector<int>>());
    EXPECT_EQ(enc->labels, ref["labels"].get<std::vector<int>>());
    with_images += !images.empty();
  }
  EXPECT_GE(with_images, 3);
}

TEST_F(Gemma4ChatTest, LabelsAreExactlyTheModelTurns) {
  const SpecialTokenIds& s = tok_->special();
  ASSERT_GE(s.turn_close, 0);
  ChatOptions options;
  options.format = ChatFormat::kGemma4;
  // Conversation 1: two model turns, the second with a thought to strip.
  auto enc =
      EncodeChat(*tok_, (*convs_)[1], options, std::vector<ChatImageInfo>{});
  ASSERT_TRUE(enc.ok()) << enc.status();
  std::vector<std::vector<int>> runs;  // maximal runs of labelled tokens
  for (size_t i = 0; i < enc->labels.size(); ++i) {
    if (enc->labels[i] == kIgnoreIndex) continue;
    if (i == 0 || enc->labels[i - 1] == kIgnoreIndex) runs.emplace_back();
    runs.back().push_back(enc->labels[i]);
  }
  ASSERT_EQ(runs.size(), 2u);
  const std::string want[] = {"café naïve 日本語 🙂 tab\there",
                              "2024-01-31\nline two"};
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(runs[r].back(), s.turn_close);
    runs[r].pop_back();
    auto text = tok_->Decode(runs[r]);
    ASSERT_TRUE(text.ok());
    EXPECT_EQ(*text, want[r]);
  }
}

TEST_F(Gemma4ChatTest, ImagesPerConversationMatchHuggingFace) {
  const nlohmann::json& refs = (*ref_)["conversations"];
  int checked = 0;
  for (size_t i = 0; i < refs.size(); ++i) {
    if (refs[i]["num_soft_tokens"].empty() ||
        refs[i]["add_generation_prompt"].get<bool>())
      continue;
    SCOPED_TRACE("conversation " + std::to_string(i));
    BatchOptions o = Gemma4Batches(1);
    auto loader = DataLoader::Create({(*convs_)[i]}, tok_, o);
    ASSERT_TRUE(loader.ok()) << loader.status();
    auto b = (*loader)->Next();
    ASSERT_TRUE(b.ok()) << b.status();
    const std::vector<int64_t> shape = refs[i]["pixel_shape"];
    EXPECT_EQ(b->pixel_values.sizes().vec(), shape);
    EXPECT_EQ(b->image_positions.sizes().vec(),
              (std::vector<int64_t>{shape[0], shape[1], 2}));
    const std::string base = *dir_ + "/conv" + std::to_string(i);
    EXPECT_EQ(Flat<float>(b->pixel_values),
              ReadRaw<float>(base + ".pixel_values.f32"));
    EXPECT_EQ(Flat<int64_t>(b->image_positions),
              ReadRaw<int64_t>(base + ".positions.i64"));
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

// The training conversations as one batch: rows as HF's (whose padding is on
// the left; ours on the right), images batch-major, every one padded to the
// budget's patch count.
TEST_F(Gemma4ChatTest, BatchMatchesHuggingFace) {
  const nlohmann::json& ref = (*ref_)["batch"];
  const std::vector<int> rows = ref["rows"];
  std::vector<Conversation> data;
  for (int r : rows) data.push_back((*convs_)[r]);
  auto loader = DataLoader::Create(
      data, tok_, Gemma4Batches(static_cast<int>(rows.size())));
  ASSERT_TRUE(loader.ok()) << loader.status();
  auto b = (*loader)->Next();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(ref["padding_side"], "left");
  for (size_t r = 0; r < rows.size(); ++r) {
    SCOPED_TRACE("row " + std::to_string(r));
    const std::vector<int> mask = ref["attention_mask"][r];
    const int64_t n = std::count(mask.begin(), mask.end(), 1);
    const int64_t pad = static_cast<int64_t>(mask.size()) - n;
    const std::vector<int> ids = ref["input_ids"][r],
                           types = ref["mm_token_type_ids"][r];
    EXPECT_EQ(Ints(b->input_ids[r], n),
              std::vector<int>(ids.begin() + pad, ids.end()));
    EXPECT_EQ(Ints(b->token_type_ids[r], n),
              std::vector<int>(types.begin() + pad, types.end()));
    EXPECT_EQ(
        Ints(b->labels[r], n),
        (*ref_)["conversations"][rows[r]]["labels"].get<std::vector<int>>());
    EXPECT_EQ(b->attention_mask[r].sum().item<int64_t>(), n);
  }
  const std::vector<int64_t> shape = ref["pixel_shape"];
  ASSERT_EQ(b->pixel_values.sizes().vec(), shape);
  EXPECT_EQ(b->pixel_values.scalar_type(), torch::kFloat32);
  EXPECT_EQ(b->image_positions.scalar_type(), torch::kInt64);
  EXPECT_EQ(Flat<float>(b->pixel_values),
            ReadRaw<float>(*dir_ + "/batch.pixel_values.f32"));
  EXPECT_EQ(Flat<int64_t>(b->image_positions),
            ReadRaw<int64_t>(*dir_ + "/batch.positions.i64"));
  // Image k's soft-token count is the length of the k-th <|image|> run.
  std::vector<int64_t> runs;
  const at::Tensor image_tokens =
      b->input_ids == tok_->special().image_placeholder;
  for (int64_t r = 0; r < image_tokens.size(0); ++r) {
    for (int64_t t = 0; t < image_tokens.size(1); ++t) {
      if (!image_tokens[r][t].item<bool>()) continue;
      if (t == 0 || !image_tokens[r][t - 1].item<bool>()) runs.push_back(0);
      ++runs.back();
    }
  }
  ASSERT_EQ(static_cast<int64_t>(runs.size()), shape[0]);
  const at::Tensor real = (b->image_positions.select(2, 0) >= 0).sum(1);
  for (size_t k = 0; k < runs.size(); ++k) {
    const int k2 =
        ImageOptions().pooling_kernel_size * ImageOptions().pooling_kernel_size;
    EXPECT_EQ(runs[k] * k2, real[k].item<int64_t>()) << "image " << k;
  }
  EXPECT_EQ(
      std::accumulate(b->images_per_row.begin(), b->images_per_row.end(), 0),
      shape[0]);
}

TEST_F(Gemma4ChatTest, ResumedLoaderRepeatsTheBatches) {
  std::vector<Conversation> data;
  for (const nlohmann::json& r : (*ref_)["batch"]["rows"])
    data.push_back((*convs_)[r.get<int>()]);
  BatchOptions o = Gemma4Batches(2);
  o.shuffle = true;
  o.seed = 5;
  auto a = DataLoader::Create(data, tok_, o);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE((*a)->Next().ok());
  const LoaderPosition saved = (*a)->position();
  auto want = (*a)->Next();
  ASSERT_TRUE(want.ok()) << want.status();
  auto b = DataLoader::Create(data, tok_, o);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->Seek(saved).ok());
  auto got = (*b)->Next();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(torch::equal(got->input_ids, want->input_ids));
  EXPECT_TRUE(torch::equal(got->pixel_values, want->pixel_values));
  EXPECT_TRUE(torch::equal(got->image_positions, want->image_positions));
}

TEST_F(Gemma4ChatTest, TextOnlyBatchesHaveEmptyImageTensorsAndPack) {
  BatchOptions o = Gemma4Batches(1);
  o.pack = true;
  o.seq_len = 160;  // the three conversations take 43 + 69 + 40 tokens
  auto loader =
      DataLoader::Create({(*convs_)[0], (*convs_)[1], (*convs_)[5]}, tok_, o);
  ASSERT_TRUE(loader.ok()) << loader.status();
  auto b = (*loader)->Next();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->num_conversations, 3);
  const int64_t p = Gemma4MaxPatches(ImageOptions());
  EXPECT_EQ(b->pixel_values.sizes().vec(), (std::vector<int64_t>{0, p, 768}));
  EXPECT_EQ(b->image_positions.sizes().vec(), (std::vector<int64_t>{0, p, 2}));
  EXPECT_EQ(b->segment_ids.max().item<int>(), 3);
}

TEST_F(Gemma4ChatTest, CorruptImageNamesTheFile) {
  const std::string bad = *dir_ + "/images/corrupt.png";
  testing_util::WriteFile(bad, "not a png at all");
  Conversation c = (*convs_)[0];
  c.source = "corrupt.jsonl:7";
  ContentPart img;
  img.type = ContentPart::Type::kImage;
  img.image_path = bad;
  c.messages[1].content.push_back(img);
  auto loader = DataLoader::Create({c}, tok_, Gemma4Batches(1));
  ASSERT_TRUE(loader.ok()) << loader.status();
  auto b = (*loader)->Next();
  ASSERT_FALSE(b.ok());
  EXPECT_THAT(b.status().message(), HasSubstr(bad));
  EXPECT_THAT(b.status().message(), HasSubstr("corrupt.jsonl:7"));
}

TEST_F(Gemma4ChatTest, MissingSpecialTokensAreNamed) {
  // A Gemma 3 tokenizer has no <|turn>.
  const std::string dir = testing_util::MakeTempDir("gemma3_tok");
  testing_util::WriteFile(dir + "/corpus.txt",
                          std::string(200, 'a') + "\nhello world\n");
  TokenizerTrainOptions t;
  t.input_files = {dir + "/corpus.txt"};
  t.model_path = dir + "/tokenizer.model";
  t.vocab_size = 300;
  ASSERT_TRUE(TrainTokenizer(t).ok());
  auto gemma3 = Tokenizer::Load(t.model_path);
  ASSERT_TRUE(gemma3.ok()) << gemma3.status();
  ChatOptions o;
  o.format = ChatFormat::kGemma4;
  auto enc = EncodeChat(**gemma3, (*convs_)[0], o);
  ASSERT_FALSE(enc.ok());
  EXPECT_EQ(enc.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(enc.status().message(), HasSubstr("<|turn>"));
  EXPECT_THAT(enc.status().message(), HasSubstr(t.model_path));
  auto loader =
      DataLoader::Create({(*convs_)[0]}, gemma3->get(), Gemma4Batches(1));
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(), HasSubstr("<|turn>"));
  // And the Gemma 4 tokenizer has no <start_of_turn> for the Gemma 3 format.
  auto g3 = EncodeChat(*tok_, (*convs_)[0], ChatOptions{});
  ASSERT_FALSE(g3.ok());
  EXPECT_THAT(g3.status().message(), HasSubstr("<start_of_turn>"));
  EXPECT_THAT(g3.status().message(), HasSubstr(tok_->path()));
}

TEST_F(Gemma4ChatTest, RenderingRules) {
  ChatOptions o;
  o.format = ChatFormat::kGemma4;
  Conversation c;
  c.source = "t:1";
  ContentPart text, img;
  text.text = " hi ";
  img.type = ContentPart::Type::kImage;
  img.image_path = "x.png";
  c.messages = {{"system", {text}}, {"user", {img, text}}};
  // An image needs its soft-token count.
  auto r = RenderChat(c, o, std::vector<ChatImageInfo>{{}});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("x.png"));
  o.add_generation_prompt = true;
  r = RenderChat(c, o, std::vector<ChatImageInfo>{Soft(2)});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->text,
            "<bos><|turn>system\nhi<turn|>\n<|turn>user\n\n\n<|image><|image|><"
            "|image|><image|>\n\nhi<turn|>\n"
            "<|turn>model\n<|channel>thought\n<channel|>");
  EXPECT_TRUE(r->label_spans.empty());
  c.messages.push_back({"tool", {text}});
  r = RenderChat(c, o, std::vector<ChatImageInfo>{Soft(2)});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("tool"));
  EXPECT_THAT(r.status().message(), HasSubstr("t:1"));
  BatchOptions bo = Gemma4Batches(1);
  bo.gemma4_image.max_soft_tokens = 100;
  auto loader = DataLoader::Create({(*convs_)[0]}, tok_, bo);
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(), HasSubstr("max_soft_tokens"));
}

}  // namespace
}  // namespace gemma
