// Worker processes attaching to a real coordinator and leaving it.
#include <signal.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_fixture.h"

namespace gemma::testing {
namespace {

using ::testing::HasSubstr;

int CountOccurrences(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos;
       pos = text.find(needle, pos + 1)) {
    ++n;
  }
  return n;
}

TEST(WorkersTest, TwoWorkersAttachAndALostOneLeavesTheList) {
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator({"--heartbeat-ms", "200"}));
  Subprocess& w1 = cluster.StartWorker();
  Subprocess& w2 = cluster.StartWorker();
  std::string out;
  ASSERT_TRUE(WaitFor(
      [&] {
        return cluster.Ctl({"workers", "-o", "json"}, &out) == 0 &&
               CountOccurrences(out, "\"device_kind\": \"cpu\"") == 2;
      },
      absl::Seconds(60)))
      << out << "\n--- w1:\n" << w1.Log() << "\n--- w2:\n" << w2.Log();
  EXPECT_THAT(out, HasSubstr("\"pid\": " + std::to_string(w1.pid())));
  EXPECT_THAT(out, HasSubstr("\"pid\": " + std::to_string(w2.pid())));
  ASSERT_EQ(cluster.Ctl({"workers"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("cpu x1"));

  // kill -9: the session stream breaks and the coordinator drops the worker.
  w1.Stop(SIGKILL);
  ASSERT_TRUE(WaitFor(
      [&] {
        return cluster.Ctl({"workers", "-o", "json"}, &out) == 0 &&
               CountOccurrences(out, "\"device_kind\": \"cpu\"") == 1;
      },
      absl::Seconds(30)))
      << out;
  EXPECT_THAT(out, HasSubstr("\"pid\": " + std::to_string(w2.pid())));
  // SIGTERM detaches cleanly.
  EXPECT_EQ(w2.Stop(SIGTERM), 0) << w2.Log();
}

TEST(WorkersTest, WorkerReattachesAfterCoordinatorRestart) {
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator({"--heartbeat-ms", "200"}));
  const int port = cluster.port();
  Subprocess& w = cluster.StartWorker();
  std::string out;
  ASSERT_TRUE(WaitFor([&] { return cluster.Ctl({"status"}, &out) == 0 &&
                                   out.find("workers: 1 attached") != std::string::npos; },
                      absl::Seconds(60)))
      << out;
  cluster.coordinator().Stop(SIGKILL);
  // Same port again: the worker's backoff loop finds it.
  ASSERT_TRUE(cluster.StartCoordinator(
      {"--listen", "127.0.0.1:" + std::to_string(port), "--heartbeat-ms", "200"}));
  ASSERT_EQ(cluster.port(), port);
  EXPECT_TRUE(WaitFor([&] { return cluster.Ctl({"status"}, &out) == 0 &&
                                   out.find("workers: 1 attached") != std::string::npos; },
                      absl::Seconds(30)))
      << out << "\n" << w.Log();
}

TEST(WorkersTest, BadDeviceIsRefusedWithAClearError) {
  std::string out;
  EXPECT_EQ(RunProgram({BinPath("gemma-worker"), "--device", "tpu:0"}, &out), 2);
  EXPECT_THAT(out, HasSubstr("'tpu:0' is not auto, cpu or cuda:N"));
}

}  // namespace
}  // namespace gemma::testing
