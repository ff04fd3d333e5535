#include "jobs/schedule.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace gemma {
namespace {

// Runs the reference script and returns its JSON output.
nlohmann::json HfRates() {
  const std::string cmd = std::string(GEMMA_PYTHON) + " " + GEMMA_SOURCE_DIR +
                          "/jobs/testdata/schedule_ref.py";
  FILE* pipe = popen(cmd.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), pipe)) out.append(buf, n);
  EXPECT_EQ(pclose(pipe), 0) << out;
  return nlohmann::json::parse(out);
}

void ExpectRates(const LrSchedule& s, const nlohmann::json& ref, int64_t upto) {
  for (int64_t step = 0; step < upto; ++step) {
    const double want = ref[step].get<double>();
    EXPECT_NEAR(s.At(step), want, 1e-15 + 1e-12 * want) << "step " << step;
  }
}

TEST(ScheduleTest, MatchesTransformersSchedulers) {
  const nlohmann::json ref = HfRates();
  LrSchedule s;
  s.lr = 1e-3;
  s.warmup_steps = 3;
  s.total_steps = 20;
  // transformers' cosine goes back up past the end; ours holds the floor, so
  // compare over the schedule's own steps.
  s.kind = LrSchedule::Kind::kCosine;
  ExpectRates(s, ref["cosine"], 21);
  s.min_lr_ratio = 0.1;
  ExpectRates(s, ref["cosine_min"], 21);
  s.min_lr_ratio = 0.0;
  s.kind = LrSchedule::Kind::kLinear;
  ExpectRates(s, ref["linear"], 22);
  s.kind = LrSchedule::Kind::kConstant;
  ExpectRates(s, ref["constant"], 22);
}

TEST(ScheduleTest, FloorAndWarmupShape) {
  LrSchedule s;
  s.lr = 2.0;
  s.warmup_steps = 4;
  s.total_steps = 10;
  s.min_lr_ratio = 0.1;
  EXPECT_EQ(s.At(0), 0.0);
  EXPECT_DOUBLE_EQ(s.At(2), 1.0);
  EXPECT_DOUBLE_EQ(s.At(4), 2.0);
  EXPECT_NEAR(s.At(10), 0.2, 1e-12);
  EXPECT_NEAR(s.At(50), 0.2, 1e-12);  // held, not rising again
  s.kind = LrSchedule::Kind::kLinear;
  EXPECT_NEAR(s.At(7), 0.2 + 1.8 * 0.5, 1e-12);
}

TEST(ScheduleTest, ParseKindNamesTheField) {
  EXPECT_EQ(*LrSchedule::ParseKind(""), LrSchedule::Kind::kCosine);
  EXPECT_EQ(*LrSchedule::ParseKind("linear"), LrSchedule::Kind::kLinear);
  auto bad = LrSchedule::ParseKind("step");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()),
              ::testing::HasSubstr("optim.schedule"));
}

}  // namespace
}  // namespace gemma
