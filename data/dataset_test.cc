#include "data/dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "data/test_util.h"

namespace gemma {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing_util::WriteFile;

TEST(CordTargetTest, SortedNestedListsJoined) {
  const auto gt = nlohmann::json::parse(R"({
    "total": {"total_price": "12.50", "cash": "20.00"},
    "menu": [{"nm": "TEA", "cnt": "1", "price": "2.00"}, {"nm": "CAKE", "cnt": 2, "price": "10.50"}],
    "date": "2024-01-31"})");
  EXPECT_EQ(
      CordTarget(gt),
      "<s_date>2024-01-31</s_date>"
      "<s_menu><s_cnt>1</s_cnt><s_nm>TEA</s_nm><s_price>2.00</s_price><sep/>"
      "<s_cnt>2</s_cnt><s_nm>CAKE</s_nm><s_price>10.50</s_price></s_menu>"
      "<s_total><s_cash>20.00</s_cash><s_total_price>12.50</s_total_price></"
      "s_total>");
  EXPECT_EQ(CordTarget(nlohmann::json::parse(R"({"b": "1", "a": "2"})"),
                       /*reverse_keys=*/true),
            "<s_b>1</s_b><s_a>2</s_a>");
  EXPECT_THAT(CordTagPieces(
                  nlohmann::json::parse(R"({"a": [{"b": "1"}, {"b": "2"}]})")),
              ElementsAre("</s_a>", "</s_b>", "<s_a>", "<s_b>", "<sep/>"));
}

class JsonlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing_util::MakeTempDir("jsonl");
    std::filesystem::create_directories(dir_ + "/imgs");
    WriteFile(dir_ + "/imgs/a.png", "not checked for content here");
  }
  std::string dir_;
};

TEST_F(JsonlTest, ParsesMessagesAndResolvesImagePaths) {
  WriteFile(
      dir_ + "/d.jsonl",
      R"({"messages": [{"role": "user", "content": [{"type": "image", "path": "imgs/a.png"}, {"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "yo"}]})"
      "\n\n"
      R"([{"role": "user", "content": "plain"}, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}])"
      "\n");
  ReadStats stats;
  auto convs = ReadJsonlConversations(dir_ + "/d.jsonl", {}, &stats);
  ASSERT_TRUE(convs.ok()) << convs.status();
  ASSERT_EQ(convs->size(), 2u);
  EXPECT_EQ(stats.read, 2);
  const Conversation& c = (*convs)[0];
  EXPECT_EQ(c.source, dir_ + "/d.jsonl:1");
  ASSERT_EQ(c.messages.size(), 2u);
  EXPECT_THAT(c.image_paths(), ElementsAre(dir_ + "/imgs/a.png"));
  EXPECT_EQ(c.messages[0].content[1].text, "hi");
  EXPECT_EQ(c.messages[1].content[0].text, "yo");
  EXPECT_EQ((*convs)[1].source, dir_ + "/d.jsonl:3");  // blank line 2 skipped
}

TEST_F(JsonlTest, BadLinesAreErrorsWithFileAndLineOrCountedSkips) {
  WriteFile(
      dir_ + "/d.jsonl",
      R"({"messages": [{"role": "user", "content": "ok"}]})"
      "\n"
      R"({"messages": [{"role": "user", "content": "broken)"
      "\n"
      R"({"messages": [{"role": "user", "content": [{"type": "image", "path": "imgs/missing.png"}]}]})"
      "\n"
      R"({"messages": [{"content": "no role"}]})"
      "\n"
      R"({"messages": [{"role": "user", "content": [{"type": "audio"}]}]})"
      "\n");
  auto strict = ReadJsonlConversations(dir_ + "/d.jsonl");
  ASSERT_FALSE(strict.ok());
  EXPECT_THAT(strict.status().message(), HasSubstr(dir_ + "/d.jsonl:2"));
  EXPECT_THAT(strict.status().message(), HasSubstr("bad JSON"));

  ReadOptions lenient;
  lenient.skip_bad = true;
  ReadStats stats;
  auto convs = ReadJsonlConversations(dir_ + "/d.jsonl", lenient, &stats);
  ASSERT_TRUE(convs.ok()) << convs.status();
  EXPECT_EQ(convs->size(), 1u);
  EXPECT_EQ(stats.skipped, 4);
  ASSERT_EQ(stats.skip_reasons.size(), 4u);
  EXPECT_THAT(stats.skip_reasons[1], HasSubstr("imgs/missing.png"));
  EXPECT_THAT(stats.skip_reasons[1], HasSubstr("d.jsonl:3"));
  EXPECT_THAT(stats.skip_reasons[2], HasSubstr("role"));
  EXPECT_THAT(stats.skip_reasons[3], HasSubstr("audio"));

  auto missing = ReadJsonlConversations(dir_ + "/nope.jsonl");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.jsonl"));
}

TEST_F(JsonlTest, CordBothLayouts) {
  // Donut / imagefolder layout.
  WriteFile(
      dir_ + "/metadata.jsonl",
      R"({"file_name": "imgs/a.png", "ground_truth": "{\"gt_parse\": {\"total\": {\"total_price\": \"3.00\"}}}"})"
      "\n");
  auto convs = ReadCordDataset(dir_);
  ASSERT_TRUE(convs.ok()) << convs.status();
  ASSERT_EQ(convs->size(), 1u);
  const Conversation& c = (*convs)[0];
  EXPECT_THAT(c.image_paths(), ElementsAre(dir_ + "/imgs/a.png"));
  EXPECT_EQ(c.messages[0].content[1].text, "Describe this image.");
  EXPECT_EQ(c.messages[1].role, "assistant");
  EXPECT_EQ(c.messages[1].content[0].text,
            "<s_total><s_total_price>3.00</s_total_price></s_total>");

  // Original layout: json/NAME.json beside image/NAME.png.
  const std::string orig = testing_util::MakeTempDir("cord");
  std::filesystem::create_directories(orig + "/json");
  std::filesystem::create_directories(orig + "/image");
  WriteFile(orig + "/json/receipt_00001.json",
            R"({"gt_parse": {"menu": {"nm": "TEA"}}, "meta": {}})");
  WriteFile(orig + "/image/receipt_00001.png", "x");
  WriteFile(orig + "/json/receipt_00002.json",
            R"({"gt_parse": {"menu": {"nm": "CAKE"}}})");
  convs = ReadCordDataset(orig);
  ASSERT_FALSE(convs.ok());
  EXPECT_THAT(convs.status().message(), HasSubstr("receipt_00002"));
  ReadOptions lenient;
  lenient.skip_bad = true;
  ReadStats stats;
  convs = ReadCordDataset(orig, lenient, &stats);
  ASSERT_TRUE(convs.ok()) << convs.status();
  ASSERT_EQ(convs->size(), 1u);
  EXPECT_EQ(stats.skipped, 1);
  EXPECT_EQ((*convs)[0].messages[1].content[0].text,
            "<s_menu><s_nm>TEA</s_nm></s_menu>");
  EXPECT_FALSE(ReadCordDataset(orig + "/json").ok());
}

}  // namespace
}  // namespace gemma
