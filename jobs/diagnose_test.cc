// The diagnose kind through the Job interface, and the registry's contract.
#include "jobs/diagnose.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jobs/registry.h"

namespace gemma {
namespace {

struct Recorder {
  std::mutex mu;
  std::vector<int64_t> steps;
  std::vector<double> gflops;
  std::vector<std::string> logs;
  std::vector<std::pair<int64_t, std::string>> checkpoints;
};

RankContext MakeContext(Recorder* rec, std::atomic<bool>* stop) {
  RankContext ctx;
  ctx.spec.set_kind(gemma::v1::JOB_KIND_DIAGNOSE);
  ctx.job = "jobs/t1";
  ctx.device = "cpu";
  ctx.progress = [rec](int64_t step, int64_t,
                       const std::map<std::string, double>& m) {
    std::lock_guard<std::mutex> l(rec->mu);
    rec->steps.push_back(step);
    if (m.count("gflops")) rec->gflops.push_back(m.at("gflops"));
  };
  ctx.log = [rec](const std::string& s) {
    std::lock_guard<std::mutex> l(rec->mu);
    rec->logs.push_back(s);
  };
  ctx.checkpoint = [rec](int64_t step, const std::string& path, int64_t,
                         const std::map<std::string, double>&) {
    std::lock_guard<std::mutex> l(rec->mu);
    rec->checkpoints.emplace_back(step, path);
  };
  ctx.cancelled = [stop] { return stop->load(); };
  return ctx;
}

TEST(DiagnoseTest, ReportsEveryStepWithPositiveThroughput) {
  Recorder rec;
  std::atomic<bool> stop{false};
  RankContext ctx = MakeContext(&rec, &stop);
  ctx.spec.mutable_diagnose()->set_steps(5);
  ctx.spec.mutable_diagnose()->set_matrix_size(64);
  auto job = JobRegistry::Default().Create(gemma::v1::JOB_KIND_DIAGNOSE);
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_TRUE((*job)->Run(ctx).ok());
  EXPECT_THAT(rec.steps, ::testing::ElementsAre(0, 1, 2, 3, 4, 5));
  ASSERT_EQ(rec.gflops.size(), 5u);
  for (double g : rec.gflops) EXPECT_GT(g, 0.0);
  EXPECT_FALSE(rec.logs.empty());
}

TEST(DiagnoseTest, StopsWhenCancelled) {
  Recorder rec;
  std::atomic<bool> stop{false};
  RankContext ctx = MakeContext(&rec, &stop);
  ctx.spec.mutable_diagnose()->set_steps(1000000);
  ctx.spec.mutable_diagnose()->set_matrix_size(16);
  ctx.spec.mutable_diagnose()->set_step_sleep_ms(5);
  ctx.progress = [&](int64_t step, int64_t,
                     const std::map<std::string, double>&) {
    if (step == 3) stop = true;
  };
  auto status = NewDiagnoseJob()->Run(ctx);
  EXPECT_TRUE(absl::IsCancelled(status)) << status;
}

TEST(DiagnoseTest, WritesAndReportsCheckpointsAtTheInterval) {
  Recorder rec;
  std::atomic<bool> stop{false};
  RankContext ctx = MakeContext(&rec, &stop);
  // (No std::filesystem here: libtorch.so shadows its symbols.)
  const std::string root =
      ::testing::TempDir() + "/diag-ckpt-" + std::to_string(getpid());
  ASSERT_EQ(std::system(("rm -rf '" + root + "'").c_str()), 0);
  ctx.spec.mutable_diagnose()->set_steps(4);
  ctx.spec.mutable_diagnose()->set_matrix_size(8);
  ctx.spec.mutable_checkpoint()->set_interval_steps(2);
  ctx.spec.mutable_checkpoint()->set_root(root);
  ASSERT_TRUE(NewDiagnoseJob()->Run(ctx).ok());
  ASSERT_EQ(rec.checkpoints.size(), 2u);
  EXPECT_EQ(rec.checkpoints[0].first, 2);
  EXPECT_EQ(rec.checkpoints[1].first, 4);
  std::ifstream in(rec.checkpoints[1].second + "/rank-00000.txt");
  std::string word;
  in >> word;
  EXPECT_EQ(word, "step");
  struct stat st;
  EXPECT_NE(
      stat((rec.checkpoints[1].second + "/rank-00000.txt.tmp").c_str(), &st),
      0);
}

TEST(JobRegistryTest, UnknownKindsAreUnimplemented) {
  // (sft and peft are implemented now; no factory is registered for this.)
  auto job = JobRegistry::Default().Create(gemma::v1::JOB_KIND_UNSPECIFIED);
  ASSERT_FALSE(job.ok());
  EXPECT_TRUE(absl::IsUnimplemented(job.status()));
  EXPECT_THAT(std::string(job.status().message()),
              ::testing::HasSubstr("'unspecified'"));
}

}  // namespace
}  // namespace gemma
