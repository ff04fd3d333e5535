// The data plane's rendezvous end to end: a real coordinator and gemma-worker
// processes; rank 0's worker opens the attempt's c10d store, the coordinator
// hands its address to every rank, and the diagnose job's ranks all-reduce
// over Gloo (checking the sum). A worker killed with SIGKILL in the middle of
// the collectives fails the attempt quickly (no rank hangs) and the job is
// retried on the remaining workers.
#include <signal.h>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jobs/train_test_util.h"
#include "tests/integration/cluster_fixture.h"

namespace gemma::testing {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

const std::vector<std::string> kFastFlags = {
    "--heartbeat-ms", "100",  "--lease-ms", "3000",
    "--grace-ms",     "6000", "--tick-ms",  "50"};

std::string Recipe(int tp, int dp, int steps, int sleep_ms, int64_t bytes,
                   int max_restarts = 0) {
  return absl::StrCat(
      "kind: diagnose\nparallel: {tp: ", tp, ", dp: ", dp,
      "}\nresources: {device: cpu}\nrestart: {max_restarts: ", max_restarts,
      ", backoff_seconds: 0.2}\ndiagnose: {steps: ", steps,
      ", matrix_size: 16, step_sleep_ms: ", sleep_ms,
      ", allreduce_bytes: ", bytes, "}\n");
}

class DistRendezvousTest : public ::testing::Test {
 protected:
  void Start(int workers) {
    ASSERT_TRUE(cluster_.StartCoordinator(kFastFlags))
        << cluster_.coordinator().Log();
    for (int i = 0; i < workers; ++i) cluster_.StartWorker();
    ASSERT_TRUE(WaitFor(
        [&] {
          std::string out;
          return cluster_.Ctl({"status", "-o", "json"}, &out) == 0 &&
                 json::parse(out).value("workers_total", 0) == workers;
        },
        absl::Seconds(60)))
        << Logs();
  }
  std::string Submit(const std::string& yaml) {
    const std::string path =
        cluster_.WriteRecipe("r" + std::to_string(++recipes_) + ".yaml", yaml);
    std::string out;
    EXPECT_EQ(cluster_.Ctl({"submit", "-f", path, "-o", "json"}, &out), 0)
        << out;
    return json::parse(out).value("name", "");
  }
  json Get(const std::string& job) {
    std::string out;
    if (cluster_.Ctl({"get", job, "-o", "json"}, &out) != 0)
      return json::object();
    return json::parse(out);
  }
  bool WaitState(const std::string& job, const std::string& state,
                 absl::Duration timeout = absl::Seconds(90)) {
    return WaitFor(
        [&] { return Get(job).value("state", "") == "JOB_STATE_" + state; },
        timeout);
  }
  std::string Logs() {
    std::string all = "--- coordinator:\n" + cluster_.coordinator().Log();
    for (int i = 0; i < cluster_.num_workers(); ++i) {
      all += absl::StrCat("--- worker ", i, ":\n", cluster_.worker(i).Log());
    }
    return all;
  }
  int PidOf(const std::string& worker) {
    std::string out;
    if (cluster_.Ctl({"workers", "-o", "json"}, &out) != 0) return 0;
    const json all = json::parse(out);
    for (const auto& w : all["workers"]) {
      if (w["name"] == worker) return w["pid"];
    }
    return 0;
  }

  LocalCluster cluster_;
  int recipes_ = 0;
};

TEST_F(DistRendezvousTest, FourRanksAllReduceThroughTheCoordinatorsStore) {
  Start(4);
  const std::string j = Submit(Recipe(1, 4, 5, 0, 1 << 16));
  ASSERT_TRUE(WaitState(j, "SUCCEEDED")) << Logs();
  const json jj = Get(j);
  ASSERT_EQ(jj["attempts"].size(), 1u) << jj.dump(2);
  const std::string store = jj["attempts"][0].value("store_address", "");
  EXPECT_THAT(store, HasSubstr("127.0.0.1:")) << jj.dump(2);
  // Every rank checked the sum 1+2+3+4 each step: a wrong sum fails the rank
  // and so the job, which succeeded.
  const json& progress = jj["progress"];
  EXPECT_EQ(progress.value("step", "0"), "5") << jj.dump(2);
  EXPECT_GT(progress["metrics"].value("allreduce_busbw_gbps", 0.0), 0.0)
      << jj.dump(2);
  // The store was served by rank 0's worker.
  const std::string rank0 = jj["attempts"][0]["ranks"][0]["worker"];
  const int pid0 = PidOf(rank0);
  bool found = false;
  for (int i = 0; i < cluster_.num_workers(); ++i) {
    if (cluster_.worker(i).pid() == pid0) {
      found = cluster_.worker(i).Log().find("rendezvous store on " + store) !=
              std::string::npos;
    }
  }
  EXPECT_TRUE(found) << Logs();
}

TEST_F(DistRendezvousTest, Kill9MidCollectiveFailsTheAttemptFastAndRetries) {
  Start(5);
  // 1 MiB all-reduces back to back for a while; 5 workers, 4 ranks.
  const std::string j = Submit(Recipe(1, 4, 60, 20, 1 << 20, 2));
  ASSERT_TRUE(WaitFor(
      [&] {
        const json jj = Get(j);
        return jj.contains("progress") &&
               std::stoll(jj["progress"].value("step", "0")) >= 3;
      },
      absl::Seconds(90)))
      << Logs();
  json jj = Get(j);
  const std::string victim = jj["attempts"][0]["ranks"][2]["worker"];
  const int pid = PidOf(victim);
  ASSERT_GT(pid, 0) << victim;
  const absl::Time killed = absl::Now();
  for (int i = 0; i < cluster_.num_workers(); ++i) {
    if (cluster_.worker(i).pid() == pid) cluster_.worker(i).Stop(SIGKILL);
  }
  // Attempt 1 fails within seconds: the surviving ranks do not sit in the
  // all-reduce until Gloo's 300 s timeout.
  ASSERT_TRUE(WaitFor(
      [&] {
        jj = Get(j);
        return jj["attempts"].size() >= 2u ||
               jj["attempts"][0]["state"] == "JOB_STATE_FAILED";
      },
      absl::Seconds(30)))
      << jj.dump(2) << Logs();
  EXPECT_LT(absl::Now() - killed, absl::Seconds(30));
  ASSERT_TRUE(WaitState(j, "SUCCEEDED", absl::Seconds(120))) << Logs();
  jj = Get(j);
  ASSERT_EQ(jj["attempts"].size(), 2u) << jj.dump(2);
  EXPECT_EQ(jj["attempts"][0]["state"], "JOB_STATE_FAILED");
  EXPECT_EQ(jj["attempts"][1]["state"], "JOB_STATE_SUCCEEDED");
  EXPECT_NE(jj["attempts"][1].value("store_address", ""), "");
  for (const auto& r : jj["attempts"][1]["ranks"]) {
    EXPECT_NE(r["worker"], victim);
  }
  // Every surviving rank of attempt 1 ended (none hangs): their workers took
  // attempt 2's ranks, which a busy worker could not have.
  EXPECT_EQ(jj["progress"].value("step", "0"), "60");
}

// The training losses a job's last checkpoint holds (train_state.json).
std::vector<double> CheckpointLosses(const std::string& step_dir) {
  const json state =
      json::parse(ReadFile(step_dir + "/train_state.json"), nullptr, false);
  if (state.is_discarded() || !state.contains("losses")) return {};
  return state["losses"].get<std::vector<double>>();
}

// An sft job at TP = 2 x DP = 2 on 4 of 5 workers; one worker is killed with
// SIGKILL mid-run. The attempt fails, a new one on the 4 survivors resumes
// from the last committed checkpoint, and the job ends with the same losses,
// to the bit, as the same job run without interruption.
TEST_F(DistRendezvousTest,
       Kill9MidTrainingResumesFromTheCheckpointWithTheSameLosses) {
  Start(5);
  const std::string data = cluster_.dir() + "/ocr";
  auto made_data = WriteTinyOcrData(data, 48, 3, 64);
  ASSERT_TRUE(made_data.ok()) << made_data;
  TinyVlOptions tiny;  // 4 query / 2 KV heads: splits 2 ways
  tiny.image_size = 64;
  auto made = WriteTinyVlModel(cluster_.dir() + "/tiny",
                               data + "/tokenizer.model", tiny);
  ASSERT_TRUE(made.ok()) << made;
  auto recipe = [&](const std::string& root) {
    return absl::StrCat(
        "kind: sft\nparallel: {tp: 2, dp: 2, sequence_parallel: true}\n"
        "resources: {device: cpu}\n"
        "restart: {max_restarts: 2, backoff_seconds: 0.2}\n"
        "model: {path: ",
        cluster_.dir(), "/tiny}\ndata: {train: ", data,
        "/train.jsonl, batch_size: 2, seq_len: 256, seed: 1}\n"
        "optim: {lr: 0.002, max_steps: 24, warmup_steps: 2, grad_clip: 1.0,"
        " log_interval_steps: 1}\n"
        "checkpoint: {interval_steps: 4, root: ",
        root, "}\n");
  };
  const std::string straight_root = cluster_.dir() + "/straight";
  const std::string straight = Submit(recipe(straight_root));
  ASSERT_TRUE(WaitState(straight, "SUCCEEDED", absl::Seconds(240))) << Logs();
  const std::vector<double> want =
      CheckpointLosses(straight_root + "/step-00000024");
  ASSERT_EQ(want.size(), 24u);

  const std::string killed_root = cluster_.dir() + "/killed";
  const std::string j = Submit(recipe(killed_root));
  ASSERT_TRUE(WaitFor(
      [&] {
        const json jj = Get(j);
        return jj.contains("progress") &&
               std::stoll(jj["progress"].value("step", "0")) >= 6;
      },
      absl::Seconds(120)))
      << Logs();
  json jj = Get(j);
  ASSERT_LT(std::stoll(jj["progress"].value("step", "0")), 24)
      << "the job ended before the kill";
  const std::string victim = jj["attempts"][0]["ranks"][3]["worker"];
  const int pid = PidOf(victim);
  ASSERT_GT(pid, 0) << victim;
  for (int i = 0; i < cluster_.num_workers(); ++i) {
    if (cluster_.worker(i).pid() == pid) cluster_.worker(i).Stop(SIGKILL);
  }
  ASSERT_TRUE(WaitState(j, "SUCCEEDED", absl::Seconds(240))) << Logs();
  jj = Get(j);
  ASSERT_EQ(jj["attempts"].size(), 2u) << jj.dump(2);
  EXPECT_EQ(jj["attempts"][0]["state"], "JOB_STATE_FAILED");
  for (const auto& r : jj["attempts"][1]["ranks"])
    EXPECT_NE(r["worker"], victim);
  // Attempt 2 started from a checkpoint, not from step 0.
  std::string logs;
  ASSERT_EQ(cluster_.Ctl({"logs", j}, &logs), 0) << logs;
  EXPECT_THAT(logs, ::testing::ContainsRegex("steps ([4-9]|1[0-9]|20)\\.\\.24"))
      << logs;
  const std::vector<double> got =
      CheckpointLosses(killed_root + "/step-00000024");
  ASSERT_EQ(got.size(), 24u);
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_EQ(got[i], want[i]) << "step " << i + 1;
}

}  // namespace
}  // namespace gemma::testing
