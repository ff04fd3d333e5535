#include "data/metrics.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace gemma {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

TEST(MetricsTest, WhitespaceIsTrimmedAndCollapsed) {
  EXPECT_EQ(NormalizeWhitespace("  a \t b\n\nc  "), "a b c");
  EXPECT_EQ(NormalizeWhitespace("\n\t "), "");
  EXPECT_TRUE(ExactMatch("Total 12.50", " Total   12.50\n"));
  EXPECT_FALSE(ExactMatch("total 12.50", "Total 12.50"));  // case kept
  EXPECT_FALSE(ExactMatch("Total 12.5", "Total 12.50"));
}

TEST(MetricsTest, CharErrorRateCountsCodePoints) {
  EXPECT_EQ(
      EditDistance(Utf8ToCodePoints("kitten"), Utf8ToCodePoints("sitting")), 3);
  EXPECT_DOUBLE_EQ(CharErrorRate("kitten", "sitting"), 3.0 / 7.0);
  // é is two bytes but one code point: one substitution over 4 characters.
  EXPECT_DOUBLE_EQ(CharErrorRate("cafe", "café"), 1.0 / 4.0);
  EXPECT_EQ(Utf8ToCodePoints("日本🙂").size(), 3u);
  EXPECT_DOUBLE_EQ(CharErrorRate("abc", "abc"), 0.0);
  EXPECT_DOUBLE_EQ(CharErrorRate("", "abcd"), 1.0);       // 4 deletions / 4
  EXPECT_DOUBLE_EQ(CharErrorRate("abcdef", "abc"), 1.0);  // 3 insertions / 3
  EXPECT_DOUBLE_EQ(CharErrorRate("", ""), 0.0);
  EXPECT_DOUBLE_EQ(CharErrorRate("x", ""), 1.0);
  // An invalid byte is one code point, not a crash.
  EXPECT_EQ(Utf8ToCodePoints(std::string("a\xff"
                                         "b"))
                .size(),
            3u);
}

TEST(MetricsTest, FieldPairsFollowDonutsFlattening) {
  const std::string receipt =
      "<s_menu><s_nm>tea</s_nm><s_price>3.00</s_price><sep/>"
      "<s_nm> milk </s_nm></s_menu>"
      "<s_total><s_total_price>5.00</s_total_price></s_total>";
  EXPECT_THAT(
      ParseFieldPairs(receipt),
      ElementsAre(Pair("menu.nm", "tea"), Pair("menu.price", "3.00"),
                  Pair("menu.nm", "milk"), Pair("total.total_price", "5.00")));
  // A leaf list splits on <sep/>; empty values are dropped.
  EXPECT_THAT(ParseFieldPairs("<s_tags>a<sep/>b<sep/> </s_tags><s_x> </s_x>"),
              ElementsAre(Pair("tags", "a"), Pair("tags", "b")));
}

TEST(MetricsTest, MalformedOutputIsTolerated) {
  // <s_b> never closes: dropped, and the tag after it still counts.
  EXPECT_THAT(ParseFieldPairs("<s_a>1</s_a><s_b>2<s_c>3</s_c>"),
              ElementsAre(Pair("a", "1"), Pair("c", "3")));
  EXPECT_THAT(ParseFieldPairs("junk </s_a> <s_ <s_q>v</s_q> <s_open"),
              ElementsAre(Pair("q", "v")));
  EXPECT_TRUE(ParseFieldPairs("plain text, no tags").empty());
  EXPECT_TRUE(ParseFieldPairs("").empty());
}

TEST(MetricsTest, FieldF1IsMicroOverMultisets) {
  // pred: (nm,tea) x2, (price,4); ref: (nm,tea), (price,3). tp = 1.
  FieldCounts c =
      FieldMatch("<s_nm>tea</s_nm><s_nm>tea</s_nm><s_price>4</s_price>",
                 "<s_nm>tea</s_nm><s_price>3</s_price>");
  EXPECT_EQ(c.true_positives, 1);
  EXPECT_EQ(c.predicted, 3);
  EXPECT_EQ(c.expected, 2);
  EXPECT_DOUBLE_EQ(c.precision(), 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(c.recall(), 0.5);
  // Donut: tp / (tp + (fp + fn) / 2) = 1 / (1 + 3/2) = 0.4.
  EXPECT_DOUBLE_EQ(c.f1(), 0.4);
  EXPECT_DOUBLE_EQ(FieldMatch("", "").f1(), 1.0);
  EXPECT_DOUBLE_EQ(FieldMatch("nothing", "<s_a>1</s_a>").f1(), 0.0);
  // Same key, different nesting: not a match.
  EXPECT_DOUBLE_EQ(FieldMatch("<s_a><s_b>1</s_b></s_a>", "<s_b>1</s_b>").f1(),
                   0.0);
}

TEST(MetricsTest, GenerationMetricsAggregateOverExamples) {
  GenerationMetrics m;
  m.Add("<s_total>12.50</s_total>", " <s_total>12.50</s_total>\n");  // exact
  m.Add("<s_total>12.5</s_total><s_nm>x</s_nm>", "<s_total>12.50</s_total>");
  EXPECT_EQ(m.examples(), 2);
  EXPECT_DOUBLE_EQ(m.exact_match(), 0.5);
  // CER is on the raw texts. ex1: insert " " and "\n" = 2 edits over 26.
  // ex2: drop "0" and add "<s_nm>x</s_nm>" (14) = 15 edits over 24.
  const int64_t e1 = 2, e2 = 1 + 14;
  const int64_t r1 = 26, r2 = 24;
  EXPECT_DOUBLE_EQ(m.cer(), static_cast<double>(e1 + e2) / (r1 + r2));
  // Fields: ex1 tp 1 of 1/1; ex2 tp 0, pred 2, ref 1. Micro F1 = 2*1/(3+2).
  EXPECT_EQ(m.fields().true_positives, 1);
  EXPECT_DOUBLE_EQ(m.fields().f1(), 0.4);
}

TEST(MetricsTest, LossAggregationIsTokenWeighted) {
  LossMetrics m;
  m.Add(2.0, 2, 1);
  m.Add(4.0, 2, 2);
  EXPECT_DOUBLE_EQ(m.loss(), 1.5);
  EXPECT_DOUBLE_EQ(m.perplexity(), std::exp(1.5));
  EXPECT_DOUBLE_EQ(m.accuracy(), 0.75);
  EXPECT_DOUBLE_EQ(LossMetrics().loss(), 0.0);
}

}  // namespace
}  // namespace gemma
