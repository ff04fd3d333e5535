// JobActor: fences stale epochs, bounds the rate of progress it forwards to
// the Scheduler (always forwarding a rank's last step), keeps log lines and
// publishes live progress.
#include "coordinator/job_actor.h"

#include <mutex>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace gemma {
namespace {

namespace v1 = ::gemma::v1;

v1::WorkerMessage::Progress Step(int64_t epoch, int rank, int64_t step,
                                 int64_t total) {
  v1::WorkerMessage::Progress p;
  p.mutable_rank()->set_job("jobs/j");
  p.mutable_rank()->set_epoch(epoch);
  p.mutable_rank()->set_rank(rank);
  p.set_step(step);
  p.set_total_steps(total);
  return p;
}

TEST(JobActorTest, ForwardsAtABoundedRateAndAlwaysTheLastStep) {
  ThreadPool pool(2);
  EventHub hub;
  LogStore logs;
  std::mutex mu;
  std::vector<int64_t> forwarded;
  JobActor a(
      &pool, "jobs/j", &hub, &logs,
      [&](const v1::WorkerMessage::Progress& p) {
        std::lock_guard<std::mutex> l(mu);
        forwarded.push_back(p.step());
      },
      absl::Hours(1));
  for (int s = 1; s <= 100; ++s) a.OnProgress(Step(1, 0, s, 100));
  a.Flush();
  EXPECT_THAT(forwarded, ::testing::ElementsAre(1, 100));
  // Every step still reaches watchers as a live progress event.
  int64_t seq = 0;
  auto events = hub.ProgressSince(&seq);
  ASSERT_EQ(events.size(), 100u);
  EXPECT_EQ(events.back().job().progress().step(), 100);
  EXPECT_EQ(events.back().job().name(), "jobs/j");
}

TEST(JobActorTest, DropsProgressAndLogsOfOlderEpochs) {
  ThreadPool pool(2);
  EventHub hub;
  LogStore logs;
  int forwarded = 0;
  JobActor a(
      &pool, "jobs/j", &hub, &logs,
      [&](const v1::WorkerMessage::Progress&) { ++forwarded; },
      absl::ZeroDuration());
  a.OnEpoch(5);
  v1::RankRef old_ref, new_ref;
  old_ref.set_epoch(4);
  new_ref.set_epoch(5);
  new_ref.set_attempt(2);
  a.OnLog(old_ref, "from the failed attempt");
  a.OnLog(new_ref, "from the live attempt");
  a.OnProgress(Step(4, 0, 1, 10));
  a.OnProgress(Step(5, 0, 1, 10));
  a.Flush();
  EXPECT_EQ(forwarded, 1);
  auto lines = logs.Read("jobs/j", 0, -1);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].text(), "from the live attempt");
  EXPECT_EQ(lines[0].attempt(), 2);
}

}  // namespace
}  // namespace gemma
