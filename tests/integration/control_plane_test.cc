// The control plane end to end: a real coordinator (RocksDB on disk), real
// gemma-worker processes running the diagnose kind, gemmactl as a user runs it.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "gemma/v1/cluster.grpc.pb.h"
#include "gemma/v1/jobs.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_fixture.h"

namespace gemma::testing {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

// Short intervals keep the suite fast; the lease leaves room for a loaded
// 2-core machine (a lost worker here is found by its broken stream anyway).
const std::vector<std::string> kFastFlags = {
    "--heartbeat-ms", "100",  "--lease-ms", "3000",
    "--grace-ms",     "6000", "--tick-ms",  "50"};

std::string Recipe(int tp, int dp, int steps, int sleep_ms,
                   int max_restarts = 0) {
  return absl::StrCat(
      "kind: diagnose\nparallel: {tp: ", tp, ", dp: ", dp,
      "}\nresources: {device: cpu}\nrestart: {max_restarts: ", max_restarts,
      ", backoff_seconds: 0.2}\ndiagnose: {steps: ", steps,
      ", matrix_size: 32, step_sleep_ms: ", sleep_ms, "}\n");
}

class ControlPlaneTest : public ::testing::Test {
 protected:
  void Start(int workers, std::vector<std::string> extra = {}) {
    std::vector<std::string> flags = kFastFlags;
    flags.insert(flags.end(), extra.begin(), extra.end());
    ASSERT_TRUE(cluster_.StartCoordinator(flags))
        << cluster_.coordinator().Log();
    for (int i = 0; i < workers; ++i) cluster_.StartWorker();
    ASSERT_TRUE(WaitForWorkers(workers)) << Logs();
  }
  bool WaitForWorkers(int n) {
    return WaitFor(
        [&] {
          std::string out;
          return cluster_.Ctl({"status", "-o", "json"}, &out) == 0 &&
                 json::parse(out).value("workers_total", 0) == n;
        },
        absl::Seconds(60));
  }
  // Submits; returns the job name.
  std::string Submit(const std::string& yaml,
                     std::vector<std::string> extra = {}) {
    const std::string path =
        cluster_.WriteRecipe("r" + std::to_string(++recipes_) + ".yaml", yaml);
    std::vector<std::string> args = {"submit", "-f", path, "-o", "json"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::string out;
    EXPECT_EQ(cluster_.Ctl(args, &out), 0) << out;
    return json::parse(out).value("name", "");
  }
  json Get(const std::string& job) {
    std::string out;
    if (cluster_.Ctl({"get", job, "-o", "json"}, &out) != 0)
      return json::object();
    return json::parse(out);
  }
  std::string State(const std::string& job) {
    return Get(job).value("state", "");
  }
  bool WaitState(const std::string& job, const std::string& state,
                 absl::Duration timeout = absl::Seconds(60)) {
    return WaitFor([&] { return State(job) == "JOB_STATE_" + state; }, timeout);
  }
  std::string Logs() {
    std::string all = "--- coordinator:\n" + cluster_.coordinator().Log();
    for (int i = 0; i < cluster_.num_workers(); ++i) {
      all += absl::StrCat("--- worker ", i, ":\n", cluster_.worker(i).Log());
    }
    return all;
  }

  LocalCluster cluster_;
  int recipes_ = 0;
};

TEST_F(ControlPlaneTest,
       GangSchedulingRunsSmallJobsSideBySideAndHoldsTheBigOne) {
  Start(4);
  const std::string a = Submit(Recipe(1, 2, 120, 50));
  const std::string b = Submit(Recipe(2, 1, 120, 50));
  const std::string c = Submit(Recipe(2, 2, 3, 0));
  ASSERT_TRUE(WaitFor(
      [&] {
        return State(a) == "JOB_STATE_RUNNING" &&
               State(b) == "JOB_STATE_RUNNING";
      },
      absl::Seconds(30)))
      << Logs();
  // All four workers are busy: the 4-rank job waits and says why.
  json cj = Get(c);
  EXPECT_EQ(cj["state"], "JOB_STATE_QUEUED");
  EXPECT_THAT(cj.value("waiting_reason", ""),
              HasSubstr("needs 4 cpu workers (tp=2 x dp=2); 0 free of 4"));
  std::string out;
  ASSERT_EQ(cluster_.Ctl({"get", c}, &out), 0);
  EXPECT_THAT(out, HasSubstr("waiting:   needs 4 cpu workers"));
  ASSERT_EQ(cluster_.Ctl({"status"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("cpu: 0 free, 4 used"));
  ASSERT_TRUE(WaitState(c, "SUCCEEDED")) << Logs();
  EXPECT_EQ(State(a), "JOB_STATE_SUCCEEDED");
  EXPECT_EQ(State(b), "JOB_STATE_SUCCEEDED");
  // Progress reached the coordinator: rank 0 reported the last step with its
  // throughput.
  json aj = Get(a);
  EXPECT_EQ(aj["progress"]["step"], "120");
  EXPECT_GT(aj["progress"]["metrics"]["gflops"].get<double>(), 0.0);
  ASSERT_EQ(cluster_.Ctl({"logs", a}, &out), 0);
  EXPECT_THAT(out, HasSubstr("rank 1 step 120/120"));
  ASSERT_EQ(cluster_.Ctl({"list", "--state", "succeeded"}, &out), 0);
  EXPECT_THAT(out, HasSubstr(c));
}

TEST_F(ControlPlaneTest, FollowExitCodeIdempotentSubmitAndCancel) {
  Start(2);
  const std::string path = cluster_.WriteRecipe("ok.yaml", Recipe(1, 2, 5, 0));
  std::string out;
  EXPECT_EQ(cluster_.Ctl({"submit", "-f", path, "--follow"}, &out), 0)
      << out << Logs();
  EXPECT_THAT(out, HasSubstr("SUCCEEDED"));
  EXPECT_THAT(out, HasSubstr("step 5/5"));
  // The same request id twice is one job.
  const std::string j1 =
      Submit(Recipe(1, 1, 1000, 20), {"--request-id", "abc-1"});
  const std::string j2 =
      Submit(Recipe(1, 1, 1000, 20), {"--request-id", "abc-1"});
  EXPECT_EQ(j1, j2);
  ASSERT_TRUE(WaitState(j1, "RUNNING")) << Logs();
  ASSERT_EQ(cluster_.Ctl({"cancel", j1}, &out), 0) << out;
  ASSERT_TRUE(WaitState(j1, "CANCELLED", absl::Seconds(20))) << Logs();
  // Cancelling again is an illegal transition; following a cancelled job fails.
  EXPECT_EQ(cluster_.Ctl({"cancel", j1}, &out), 1);
  EXPECT_THAT(out, HasSubstr("already CANCELLED"));
  EXPECT_EQ(cluster_.Ctl({"watch", j1}, &out), 1) << out;
  EXPECT_EQ(cluster_.Ctl({"get", "jobs/nope"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("not found"));
}

TEST_F(ControlPlaneTest, KilledWorkerFailsItsAttemptAndTheJobRetriesElsewhere) {
  Start(3);
  const std::string j = Submit(Recipe(1, 2, 120, 50, /*max_restarts=*/2));
  ASSERT_TRUE(WaitState(j, "RUNNING")) << Logs();
  json jj = Get(j);
  const std::string victim = jj["attempts"][0]["ranks"][1]["worker"];
  std::string out;
  ASSERT_EQ(cluster_.Ctl({"workers", "-o", "json"}, &out), 0);
  int pid = 0;
  const json workers = json::parse(out);
  for (const auto& w : workers["workers"]) {
    if (w["name"] == victim) pid = w["pid"];
  }
  ASSERT_GT(pid, 0) << victim << "\n" << out;
  for (int i = 0; i < cluster_.num_workers(); ++i) {
    if (cluster_.worker(i).pid() == pid) cluster_.worker(i).Stop(SIGKILL);
  }
  ASSERT_TRUE(WaitState(j, "SUCCEEDED")) << Logs();
  jj = Get(j);
  ASSERT_EQ(jj["attempts"].size(), 2u) << jj.dump(2);
  EXPECT_EQ(jj["attempts"][0]["state"], "JOB_STATE_FAILED");
  EXPECT_EQ(jj["attempts"][0]["failure"]["reason"],
            "FAILURE_REASON_WORKER_LOST");
  EXPECT_EQ(jj["attempts"][1]["state"], "JOB_STATE_SUCCEEDED");
  for (const auto& r : jj["attempts"][1]["ranks"])
    EXPECT_NE(r["worker"], victim);
}

TEST_F(ControlPlaneTest,
       CoordinatorKill9AndRestartLosesNothingAndRunsNoSecondAttempt) {
  Start(2);
  const int port = cluster_.port();
  const std::string done = Submit(Recipe(1, 1, 2, 0));
  ASSERT_TRUE(WaitState(done, "SUCCEEDED")) << Logs();
  const std::string j = Submit(Recipe(1, 2, 60, 50, /*max_restarts=*/3));
  ASSERT_TRUE(
      WaitFor(
          [&] {
            // No "progress" until the first report (value() on null throws).
            const json jj = Get(j);
            return jj.contains("progress") &&
                   jj["progress"].value("step", "0") != "0";
          },
          absl::Seconds(30)))
      << Logs();
  // A follower across the restart: it resumes from its last revision.
  Subprocess follower(
      {BinPath("gemmactl"), "watch", j, "--coordinator", cluster_.address()},
      cluster_.dir() + "/follower.log");
  std::string before;
  ASSERT_EQ(cluster_.Ctl({"watch", done, "--progress=false"}, &before), 0);
  EXPECT_THAT(before, HasSubstr("SUCCEEDED: attempt 1 succeeded"));
  std::string logs_before;
  ASSERT_EQ(cluster_.Ctl({"logs", done}, &logs_before), 0);
  ASSERT_FALSE(logs_before.empty());
  cluster_.coordinator().Stop(SIGKILL);
  std::vector<std::string> flags = {"--listen",
                                    absl::StrCat("127.0.0.1:", port)};
  flags.insert(flags.end(), kFastFlags.begin(), kFastFlags.end());
  ASSERT_TRUE(cluster_.StartCoordinator(flags)) << cluster_.coordinator().Log();
  ASSERT_EQ(cluster_.port(), port);
  ASSERT_TRUE(WaitState(j, "SUCCEEDED", absl::Seconds(60))) << Logs();
  json jj = Get(j);
  EXPECT_EQ(jj["attempt_count"], 1) << jj.dump(2);
  EXPECT_EQ(jj["attempts"].size(), 1u);
  EXPECT_EQ(State(done), "JOB_STATE_SUCCEEDED");
  // The finished job's stored history is unchanged.
  std::string after;
  ASSERT_EQ(cluster_.Ctl({"watch", done, "--progress=false"}, &after), 0);
  EXPECT_EQ(before, after);
  // So are its log lines (persisted beside the state).
  std::string logs_after;
  ASSERT_EQ(cluster_.Ctl({"logs", done}, &logs_after), 0);
  EXPECT_EQ(logs_before, logs_after);
  // Every revision from 1 to the last is present: no event lost.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto stub = gemma::v1::JobService::NewStub(grpc::CreateChannel(
      cluster_.address(), grpc::InsecureChannelCredentials()));
  gemma::v1::WatchJobRequest req;
  req.set_name(j);
  auto reader = stub->WatchJob(&ctx, req);
  gemma::v1::JobEvent ev;
  std::vector<std::string> states;
  std::vector<int64_t> revisions;
  while (reader->Read(&ev)) {
    states.push_back(gemma::v1::JobState_Name(ev.job().state()));
    revisions.push_back(ev.revision());
  }
  EXPECT_THAT(states, ::testing::ElementsAre(
                          "JOB_STATE_QUEUED", "JOB_STATE_STARTING",
                          "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"));
  ASSERT_EQ(revisions.size(), 4u);
  // Resuming after a revision replays only what came later.
  grpc::ClientContext rctx;
  rctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  req.set_after_revision(revisions[2]);
  auto resumed = stub->WatchJob(&rctx, req);
  std::vector<int64_t> later;
  while (resumed->Read(&ev)) later.push_back(ev.revision());
  EXPECT_TRUE(resumed->Finish().ok());
  EXPECT_THAT(later, ::testing::ElementsAre(revisions[3]));
  EXPECT_THAT(cluster_.coordinator().Log(),
              HasSubstr("re-attached running " + j));
  EXPECT_EQ(follower.Wait(absl::Seconds(20)), 0) << follower.Log();
  EXPECT_THAT(follower.Log(), HasSubstr(j + " SUCCEEDED: attempt 1 succeeded"));
  // Stored events are not replayed twice after the resume.
  EXPECT_EQ(follower.Log().find("RUNNING: all 2 ranks"),
            follower.Log().rfind("RUNNING: all 2 ranks"));
}

TEST_F(ControlPlaneTest, BadInputGetsClearErrorsAndTheCoordinatorStaysUp) {
  Start(2);
  std::string out;
  const std::string bad =
      cluster_.WriteRecipe("bad.yaml", "kind: diagnose\nparallel: {tp: 2\n");
  EXPECT_EQ(cluster_.Ctl({"submit", "-f", bad}, &out), 2);
  EXPECT_THAT(out, HasSubstr("bad.yaml:"));
  const std::string unknown =
      cluster_.WriteRecipe("unknown.yaml", "kind: diagnose\nparalel: {}\n");
  EXPECT_EQ(cluster_.Ctl({"submit", "-f", unknown}, &out), 2);
  EXPECT_THAT(out, HasSubstr("paralel: unknown key"));
  const std::string ok = cluster_.WriteRecipe("ok.yaml", Recipe(1, 1, 1, 0));
  EXPECT_EQ(cluster_.Ctl({"submit", "-f", ok, "--set", "parallel.ep=3"}, &out),
            2);
  EXPECT_THAT(out, HasSubstr("spec.parallel.ep: 3 does not divide"));
  // --dry-run checks and prints the spec, and submits nothing.
  EXPECT_EQ(
      cluster_.Ctl({"submit", "-f", ok, "--set", "parallel.dp=4", "--dry-run"},
                   &out),
      0);
  EXPECT_THAT(out, HasSubstr("\"dp\": 4"));
  ASSERT_EQ(cluster_.Ctl({"list", "-o", "json"}, &out), 0);
  EXPECT_THAT(out, ::testing::Not(HasSubstr("jobs/")));
  // tp=3 on 2 workers: queued, and it says why.
  const std::string wide = Submit(Recipe(3, 1, 1, 0));
  ASSERT_TRUE(
      WaitFor([&] { return !Get(wide).value("waiting_reason", "").empty(); },
              absl::Seconds(10)));
  EXPECT_THAT(
      Get(wide).value("waiting_reason", ""),
      HasSubstr(
          "needs 3 cpu workers (tp=3 x dp=1); only 2 such workers attached"));
  // The API itself: invalid fields, failing inputs, huge messages, and
  // a client leaving mid-stream.
  auto channel = grpc::CreateChannel(cluster_.address(),
                                     grpc::InsecureChannelCredentials());
  auto stub = gemma::v1::JobService::NewStub(channel);
  {
    grpc::ClientContext ctx;
    gemma::v1::SubmitJobRequest req;
    gemma::v1::Job job;
    auto s = stub->SubmitJob(&ctx, req, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("spec"));
  }
  {
    grpc::ClientContext ctx;
    gemma::v1::GetJobRequest req;
    req.set_name("workers/x");
    gemma::v1::Job job;
    auto s = stub->GetJob(&ctx, req, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(),
                HasSubstr("name: 'workers/x' is not jobs/{job}"));
  }
  {
    grpc::ClientContext ctx;
    gemma::v1::SubmitJobRequest req;
    req.mutable_spec()->set_kind(gemma::v1::JOB_KIND_DIAGNOSE);
    req.mutable_spec()->set_display_name(std::string(6 << 20, 'x'));
    gemma::v1::Job job;
    auto s = stub->SubmitJob(&ctx, req, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    gemma::v1::WatchJobsRequest req;
    auto reader = stub->WatchJobs(&ctx, req);
    gemma::v1::JobEvent ev;
    ASSERT_TRUE(reader->Read(&ev));
    ctx.TryCancel();  // leave mid-stream
    while (reader->Read(&ev)) {
    }
    reader->Finish();
  }
  // A job whose input does not exist fails on its rank, naming the file.
  const std::string missing_input =
      cluster_.WriteRecipe("eval.yaml",
                           "kind: eval\nresources: {device: cpu}\nmodel: {path: /m}\n"
                           "data: {eval: /e.jsonl}\n");
  std::string name;
  ASSERT_EQ(cluster_.Ctl({"submit", "-f", missing_input, "-o", "json"}, &out), 0) << out;
  name = json::parse(out)["name"];
  ASSERT_TRUE(WaitState(name, "FAILED")) << Logs();
  EXPECT_EQ(Get(name)["failure"]["reason"], "FAILURE_REASON_RANK_ERROR");
  EXPECT_THAT(Get(name)["failure"].value("message", ""), HasSubstr("/e.jsonl"));
  EXPECT_TRUE(cluster_.coordinator().running());
  EXPECT_EQ(cluster_.Ctl({"status"}, &out), 0) << out;
}

TEST_F(ControlPlaneTest, CheckpointsLogsAndClusterWatch) {
  Start(2);
  auto channel = grpc::CreateChannel(cluster_.address(),
                                     grpc::InsecureChannelCredentials());
  auto cluster_stub = gemma::v1::ClusterService::NewStub(channel);
  grpc::ClientContext wctx;
  auto cluster_watch =
      cluster_stub->WatchCluster(&wctx, gemma::v1::WatchClusterRequest());
  gemma::v1::ClusterStatus cs;
  ASSERT_TRUE(cluster_watch->Read(&cs));
  EXPECT_EQ(cs.workers_total(), 2);
  EXPECT_EQ(cs.workers_busy(), 0);

  Subprocess status_watch({BinPath("gemmactl"), "status", "--watch", "-o",
                           "json", "--coordinator", cluster_.address()},
                          cluster_.dir() + "/status-watch.log");
  const std::string root = cluster_.dir() + "/ckpt";
  const std::string j = Submit(
      Recipe(1, 2, 6, 100) +
      "checkpoint: {interval_steps: 2, keep_last_n: 1, root: " + root + "}\n");
  // The watch sees the workers get busy.
  bool busy = false;
  while (!busy && cluster_watch->Read(&cs)) busy = cs.workers_busy() == 2;
  EXPECT_TRUE(busy);
  wctx.TryCancel();
  while (cluster_watch->Read(&cs)) {
  }
  cluster_watch->Finish();
  EXPECT_TRUE(WaitFor(
      [&] {
        return status_watch.Log().find("\"workers_busy\": 2") !=
               std::string::npos;
      },
      absl::Seconds(10)))
      << status_watch.Log();
  status_watch.Stop(SIGTERM);
  // logs -f returns when the job ends, with every rank's lines.
  std::string out;
  ASSERT_EQ(cluster_.Ctl({"logs", "-f", j}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("rank 0 step 6/6"));
  EXPECT_THAT(out, HasSubstr("rank 1 step 6/6"));
  ASSERT_TRUE(WaitState(j, "SUCCEEDED")) << Logs();
  // keep_last_n: 1 -> only the last of steps 2, 4, 6 is kept, reported by both
  // ranks.
  ASSERT_EQ(cluster_.Ctl({"ckpt", "list", j, "-o", "json"}, &out), 0) << out;
  const json list = json::parse(out);
  ASSERT_EQ(list["checkpoints"].size(), 1u) << out;
  const json& c = list["checkpoints"][0];
  const std::string name = j + "/checkpoints/6";
  EXPECT_EQ(c["name"], name);
  EXPECT_EQ(c["state"], "CHECKPOINT_STATE_COMMITTED");
  EXPECT_EQ(c["ranks_reported"], 2);
  EXPECT_TRUE(
      std::ifstream(c["path"].get<std::string>() + "/rank-00001.txt").good());
  ASSERT_EQ(cluster_.Ctl({"ckpt", "pin", name}, &out), 0) << out;
  EXPECT_EQ(cluster_.Ctl({"ckpt", "rm", name}, &out), 1);
  EXPECT_THAT(out, HasSubstr("is pinned"));
  ASSERT_EQ(cluster_.Ctl({"ckpt", "unpin", name}, &out), 0) << out;
  ASSERT_EQ(cluster_.Ctl({"ckpt", "rm", name}, &out), 0) << out;
  EXPECT_EQ(cluster_.Ctl({"ckpt", "get", name}, &out), 1);
  EXPECT_THAT(out, HasSubstr("not found"));
  EXPECT_EQ(cluster_.Ctl({"ckpt", "get", "jobs/x/steps/1"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("is not jobs/{job}/checkpoints/{step}"));
}

TEST_F(ControlPlaneTest, RankWithoutProgressPastItsStepTimeoutIsHung) {
  Start(1);
  // Each step sleeps 2 s; the step timeout is 0.4 s.
  const std::string j =
      Submit(Recipe(1, 1, 5, 2000) + "timeouts: {step_seconds: 0.4}\n");
  ASSERT_TRUE(WaitState(j, "FAILED", absl::Seconds(30))) << Logs();
  json jj = Get(j);
  EXPECT_EQ(jj["failure"]["reason"], "FAILURE_REASON_HUNG");
  EXPECT_THAT(jj["failure"].value("message", ""),
              HasSubstr("made no progress"));
  // The worker was told to abort the rank and is free again.
  ASSERT_TRUE(WaitFor(
      [&] {
        std::string out;
        return cluster_.Ctl({"status", "-o", "json"}, &out) == 0 &&
               json::parse(out).value("workers_free", 0) == 1;
      },
      absl::Seconds(10)));
  EXPECT_TRUE(WaitFor(
      [&] {
        return cluster_.worker(0).Log().find("abort " + j) != std::string::npos;
      },
      absl::Seconds(10)))
      << Logs();
}

TEST_F(ControlPlaneTest, RetriedAttemptWaitsForANewlyAttachedWorker) {
  Start(2);
  const std::string j = Submit(Recipe(1, 2, 120, 50, /*max_restarts=*/1));
  ASSERT_TRUE(WaitState(j, "RUNNING")) << Logs();
  cluster_.worker(1).Stop(SIGKILL);
  // One worker left: the retry waits and says why.
  ASSERT_TRUE(WaitFor(
      [&] {
        return Get(j)
                   .value("waiting_reason", "")
                   .find("only 1 such worker attached") != std::string::npos;
      },
      absl::Seconds(30)))
      << Get(j).dump(2) << Logs();
  cluster_.StartWorker();
  ASSERT_TRUE(WaitState(j, "SUCCEEDED")) << Logs();
  json jj = Get(j);
  ASSERT_EQ(jj["attempts"].size(), 2u);
  EXPECT_EQ(jj["attempts"][0]["failure"]["reason"],
            "FAILURE_REASON_WORKER_LOST");
  std::set<std::string> second;
  for (const auto& r : jj["attempts"][1]["ranks"])
    second.insert(r["worker"].get<std::string>());
  EXPECT_TRUE(second.count("workers/w-00003")) << jj.dump(2);
}

}  // namespace
}  // namespace gemma::testing
