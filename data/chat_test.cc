#include "data/chat.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/image.h"
#include "data/test_util.h"
#include "data/tokenizer.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

// tests/data_parity/text_reference.py trains a Gemma-style SentencePiece
// model, builds HF's GemmaTokenizer + Gemma3Processor on it and writes the
// token ids, token types and labels of its conversations.
class ChatParityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing_util::MakeTempDir("chat_parity"));
    ASSERT_EQ(testing_util::RunParityScript("text_reference.py", *dir_), 0);
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string* dir_;
};
std::string* ChatParityTest::dir_ = nullptr;

Conversation TextConversation(
    std::vector<std::pair<std::string, std::string>> turns) {
  Conversation c;
  c.source = "test:1";
  for (auto& [role, text] : turns) {
    ContentPart p;
    p.text = text;
    c.messages.push_back({role, {p}});
  }
  return c;
}

TEST_F(ChatParityTest, TokenIdsTypesAndLabelsMatchHuggingFace) {
  auto tok = Tokenizer::Load(*dir_ + "/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto convs = ReadJsonlConversations(*dir_ + "/conversations.jsonl");
  ASSERT_TRUE(convs.ok()) << convs.status();
  const nlohmann::json refs = nlohmann::json::parse(
      testing_util::ReadFileOrDie(*dir_ + "/reference.json"));
  ASSERT_EQ(convs->size(), refs.size());
  ASSERT_GE(refs.size(), 7u);
  int with_labels = 0, with_images = 0;
  for (size_t i = 0; i < refs.size(); ++i) {
    SCOPED_TRACE("conversation " + std::to_string(i));
    const auto& ref = refs[i];
    ChatOptions options;
    options.mm_tokens_per_image = ref["mm_tokens_per_image"];
    options.add_generation_prompt = ref["add_generation_prompt"];
    std::vector<int> crops;
    if (ref["pan_and_scan"].get<bool>()) {
      // Our pan-and-scan decides the crop count on its own.
      ImageOptions io;
      io.do_pan_and_scan = true;
      for (const std::string& p : (*convs)[i].image_paths()) {
        auto img = DecodeImageFile(p);
        ASSERT_TRUE(img.ok()) << img.status();
        crops.push_back(static_cast<int>(PanAndScanCrops(*img, io).size()));
      }
      EXPECT_EQ(crops, ref["num_crops"].get<std::vector<int>>());
    }
    auto rendered = RenderChat((*convs)[i], options, crops);
    ASSERT_TRUE(rendered.ok()) << rendered.status();
    EXPECT_EQ(rendered->text, ref["text"].get<std::string>());
    auto enc = EncodeChat(**tok, (*convs)[i], options, crops);
    ASSERT_TRUE(enc.ok()) << enc.status();
    EXPECT_EQ(enc->input_ids, ref["input_ids"].get<std::vector<int>>());
    EXPECT_EQ(enc->token_type_ids,
              ref["token_type_ids"].get<std::vector<int>>());
    EXPECT_EQ(enc->labels, ref["labels"].get<std::vector<int>>());
    with_labels += std::count_if(enc->labels.begin(), enc->labels.end(),
                                 [](int l) { return l != kIgnoreIndex; }) > 0;
    with_images += (*convs)[i].num_images() > 0;
  }
  EXPECT_GE(with_labels, 5);
  EXPECT_GE(with_images, 3);
}

TEST_F(ChatParityTest, LabelsCoverOnlyModelTurnsAndImagesAreTyped) {
  auto tok = Tokenizer::Load(*dir_ + "/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const SpecialTokenIds& s = (*tok)->special();
  auto enc = EncodeChat(
      **tok, TextConversation({{"user", "question"}, {"assistant", "answer"}}),
      {});
  ASSERT_TRUE(enc.ok()) << enc.status();
  EXPECT_EQ(enc->input_ids.front(), s.bos);
  // The labelled tokens decode to the answer and its <end_of_turn>.
  std::vector<int> labelled;
  for (int l : enc->labels) {
    if (l != kIgnoreIndex) labelled.push_back(l);
  }
  ASSERT_FALSE(labelled.empty());
  EXPECT_EQ(labelled.back(), s.end_of_turn);
  labelled.pop_back();
  auto answer = (*tok)->Decode(labelled);
  ASSERT_TRUE(answer.ok());
  EXPECT_EQ(*answer, "answer");

  Conversation with_image =
      TextConversation({{"user", "look"}, {"assistant", "seen"}});
  ContentPart img;
  img.type = ContentPart::Type::kImage;
  img.image_path = "x.png";
  with_image.messages[0].content.insert(with_image.messages[0].content.begin(),
                                        img);
  ChatOptions o;
  o.mm_tokens_per_image = 7;
  enc = EncodeChat(**tok, with_image, o);
  ASSERT_TRUE(enc.ok()) << enc.status();
  EXPECT_EQ(
      std::count(enc->token_type_ids.begin(), enc->token_type_ids.end(), 1), 7);
  EXPECT_EQ(std::count(enc->input_ids.begin(), enc->input_ids.end(),
                       s.image_soft_token),
            7);
  EXPECT_EQ(std::count(enc->input_ids.begin(), enc->input_ids.end(),
                       s.start_of_image),
            1);
  EXPECT_EQ(
      std::count(enc->input_ids.begin(), enc->input_ids.end(), s.end_of_image),
      1);
}

TEST(ChatTest, RolesMustAlternate) {
  auto r = RenderChat(TextConversation({{"user", "a"}, {"user", "b"}}), {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("test:1"));
  EXPECT_THAT(r.status().message(), HasSubstr("alternate"));
  r = RenderChat(TextConversation({{"assistant", "a"}}), {});
  EXPECT_FALSE(r.ok());
  r = RenderChat(TextConversation({{"robot", "a"}}), {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("robot"));
}

TEST(ChatTest, SystemFoldsIntoFirstUserTurnAndGenerationPrompt) {
  ChatOptions o;
  o.add_generation_prompt = true;
  auto r = RenderChat(
      TextConversation({{"system", "Be nice."}, {"user", " hi "}}), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->text,
            "<bos><start_of_turn>user\nBe "
            "nice.\n\nhi<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_TRUE(r->label_spans.empty());
}

}  // namespace
}  // namespace gemma
