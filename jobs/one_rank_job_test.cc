#include "jobs/one_rank_job.h"

#include <c10/util/Exception.h>

#include "gtest/gtest.h"

namespace gemma {
namespace {

class ThrowingJob : public OneRankJob {
 public:
  ThrowingJob() : OneRankJob("demo", "; set demo.tp") {}
  int runs = 0;

 private:
  absl::Status RunOneRank(RankContext&) override {
    ++runs;
    TORCH_CHECK(false, "shapes differ");
    return absl::OkStatus();
  }
};

TEST(OneRankJobTest, RefusesMoreThanOneRankWithTheHint) {
  ThrowingJob job;
  RankContext ctx;
  ctx.world = 2;
  const absl::Status s = job.Run(ctx);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "demo runs as one rank (world 2); set demo.tp");
  EXPECT_EQ(job.runs, 0);
}

TEST(OneRankJobTest, TurnsALibTorchErrorIntoInternal) {
  ThrowingJob job;
  RankContext ctx;
  const absl::Status s = job.Run(ctx);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(s.message().rfind("demo: ", 0), 0u) << s.message();
  EXPECT_NE(s.message().find("shapes differ"), absl::string_view::npos);
  EXPECT_EQ(job.runs, 1);
}

}  // namespace
}  // namespace gemma
