// Control plane numbers, printed as a table (and one JSON line with -o json):
//  1. submit rate and scheduler throughput: N queued jobs drained through W
//     simulated workers in one process (ControlState on a real RocksDB);
//  2. coordinator restart (Recover) time with N jobs in the store;
//  3. submit-to-running latency on an idle cluster: a real gemma-coordinator
//     and gemma-worker on loopback, submit over gRPC, watch until RUNNING.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/flags.h"
#include "common/log.h"
#include "coordinator/control.h"
#include "gemma/v1/jobs.grpc.pb.h"
#include "tests/integration/cluster_fixture.h"
#include "tests/integration/subprocess.h"

namespace gemma {
namespace {

namespace v1 = ::gemma::v1;

v1::SubmitJobRequest DiagnoseRequest(int steps, int sleep_ms) {
  v1::SubmitJobRequest req;
  auto* s = req.mutable_spec();
  s->set_kind(v1::JOB_KIND_DIAGNOSE);
  s->mutable_resources()->set_device(v1::DEVICE_CPU);
  s->mutable_diagnose()->set_steps(steps);
  s->mutable_diagnose()->set_matrix_size(16);
  s->mutable_diagnose()->set_step_sleep_ms(sleep_ms);
  return req;
}

double Secs(absl::Duration d) { return absl::ToDoubleSeconds(d); }

struct SchedulerNumbers {
  double submit_per_s = 0, drain_jobs_per_s = 0, recover_queued_s = 0,
         first_pass_s = 0, recover_finished_s = 0;
};

SchedulerNumbers SchedulerBench(const std::string& dir, int jobs, int workers) {
  SchedulerNumbers n;
  ControlOptions o;
  o.lease = absl::Hours(1);
  o.grace = absl::ZeroDuration();
  absl::Time now = absl::Now();
  {
    auto store = Store::Open(dir);
    if (!store.ok()) {
      std::cerr << store.status() << "\n";
      std::exit(1);
    }
    ControlState st(store->get(), o);
    (void)st.Recover(now);
    Effects fx;
    const absl::Time t0 = absl::Now();
    for (int i = 0; i < jobs; ++i)
      (void)st.Submit(DiagnoseRequest(1, 0), now, &fx);
    n.submit_per_s = jobs / Secs(absl::Now() - t0);
  }
  auto store = Store::Open(dir);
  const absl::Time r0 = absl::Now();
  auto st = std::make_unique<ControlState>(store->get(), o);
  (void)st->Recover(now);
  n.recover_queued_s = Secs(absl::Now() - r0);
  // Attach the workers, then drain: every assignment starts and finishes at
  // once, so the time is the coordinator's (state machine + synced writes).
  std::vector<std::pair<std::string, v1::RankRef>> pending;
  auto collect = [&](Effects& fx) {
    for (auto& [w, m] : fx.sends) {
      if (m.has_assign()) pending.emplace_back(w, m.assign().rank());
    }
    fx = Effects();
  };
  std::map<std::string, int64_t> session;
  Effects fx;
  for (int i = 0; i < workers; ++i) {
    v1::WorkerMessage::Register reg;
    reg.mutable_worker()->set_device_kind("cpu");
    reg.mutable_worker()->set_host("h" + std::to_string(i % 8));
    auto name = st->Register(i + 1, reg, now, &fx);
    session[*name] = i + 1;
  }
  collect(fx);
  const absl::Time p0 = absl::Now();
  st->Tick(now, &fx);
  n.first_pass_s = Secs(absl::Now() - p0);
  collect(fx);
  const absl::Time d0 = absl::Now();
  int done = 0;
  while (!pending.empty()) {
    auto batch = std::move(pending);
    pending.clear();
    for (const auto& [w, ref] : batch) {
      v1::WorkerMessage m;
      *m.mutable_started()->mutable_rank() = ref;
      st->OnWorkerMessage(w, session[w], m, now, &fx);
      m.Clear();
      *m.mutable_finished()->mutable_rank() = ref;
      m.mutable_finished()->set_ok(true);
      st->OnWorkerMessage(w, session[w], m, now, &fx);
      collect(fx);
      ++done;
    }
  }
  n.drain_jobs_per_s = done / Secs(absl::Now() - d0);
  if (done != jobs)
    std::cerr << "warning: drained " << done << " of " << jobs << " jobs\n";
  st.reset();
  const absl::Time f0 = absl::Now();
  ControlState again(store->get(), o);
  (void)again.Recover(now);
  n.recover_finished_s = Secs(absl::Now() - f0);
  return n;
}

// Seconds from exec of gemma-coordinator on `dir` to its port file (store
// reloaded, gRPC serving).
double ProcessRestartBench(const std::string& dir) {
  const std::string port_file = dir + ".port";
  (void)std::remove(port_file.c_str());
  const absl::Time t0 = absl::Now();
  testing::Subprocess coordinator(
      {testing::BinPath("gemma-coordinator"), "--listen", "127.0.0.1:0",
       "--data-dir", dir, "--port-file", port_file},
      dir + ".log");
  const bool up = testing::WaitFor(
      [&] { return !testing::ReadFile(port_file).empty(); }, absl::Seconds(60));
  const double secs = Secs(absl::Now() - t0);
  coordinator.Stop(SIGTERM);
  return up ? secs : -1;
}

std::vector<double> LatencyBench(int runs) {
  testing::LocalCluster cluster;
  std::vector<double> ms;
  if (!cluster.StartCoordinator({"--heartbeat-ms", "200", "--tick-ms", "50"})) {
    std::cerr << "coordinator did not start:\n" << cluster.coordinator().Log();
    return ms;
  }
  cluster.StartWorker();
  auto stub = v1::JobService::NewStub(grpc::CreateChannel(
      cluster.address(), grpc::InsecureChannelCredentials()));
  std::string out;
  if (!testing::WaitFor(
          [&] {
            return cluster.Ctl({"status"}, &out) == 0 &&
                   out.find("workers: 1 attached, 1 free") != std::string::npos;
          },
          absl::Seconds(60))) {
    std::cerr << "worker did not attach\n";
    return ms;
  }
  for (int i = 0; i < runs; ++i) {
    const absl::Time t0 = absl::Now();
    grpc::ClientContext sctx;
    v1::Job job;
    grpc::Status s = stub->SubmitJob(&sctx, DiagnoseRequest(1, 0), &job);
    if (!s.ok()) {
      std::cerr << "submit: " << s.error_message() << "\n";
      break;
    }
    grpc::ClientContext wctx;
    v1::WatchJobRequest wr;
    wr.set_name(job.name());
    auto reader = stub->WatchJob(&wctx, wr);
    v1::JobEvent ev;
    bool running = false;
    while (reader->Read(&ev)) {
      if (!running && ev.job().state() == v1::JOB_STATE_RUNNING) {
        ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        running = true;
      }
    }
    reader->Finish();  // the stream ends with the job
  }
  return ms;
}

}  // namespace
}  // namespace gemma

int main(int argc, char** argv) {
  int64_t jobs = 10000, workers = 100, runs = 20;
  std::string dir = "/tmp/gemma-control-plane-bench";
  gemma::FlagSet flags(
      "control_plane_bench",
      "Measures the control plane: scheduler throughput, restart time and\n"
      "submit-to-running latency.");
  flags.Int("jobs", &jobs, "jobs queued for the scheduler and restart numbers");
  flags.Int("workers", &workers, "simulated workers");
  flags.Int("latency-runs", &runs, "submits for the latency number (0: skip)");
  flags.String("dir", &dir, "scratch folder for the store (wiped first)");
  flags.Epilog(
      "Examples:\n  control_plane_bench\n  control_plane_bench --jobs 1000 "
      "--latency-runs 0");
  if (auto exit_code = flags.ParseOrExit(argc, argv)) return *exit_code;
  if (std::getenv("GEMMA_BIN_DIR") == nullptr)
    setenv("GEMMA_BIN_DIR", GEMMA_BINARY_DIR "/bin", 1);
  (void)std::system(("rm -rf '" + dir + "'").c_str());
  gemma::SetLogTag("bench");
  setenv("GEMMA_LOG_LEVEL", "WARNING", 1);
  const auto n = gemma::SchedulerBench(dir, static_cast<int>(jobs),
                                       static_cast<int>(workers));
  std::cout
      << absl::StrFormat(
             "submit (synced write each):              %10.0f jobs/s\n",
             n.submit_per_s)
      << absl::StrFormat("restart with %d queued jobs:           %10.3f s\n",
                         jobs, n.recover_queued_s)
      << absl::StrFormat("first scheduling pass (%d queued):     %10.3f s\n",
                         jobs, n.first_pass_s)
      << absl::StrFormat(
             "drain through %d workers:                %10.0f jobs/s\n",
             workers, n.drain_jobs_per_s)
      << absl::StrFormat("restart with %d finished jobs:         %10.3f s\n",
                         jobs, n.recover_finished_s);
  std::cout << absl::StrFormat(
      "coordinator process restart to serving, %d jobs:  %.3f s\n", jobs,
      gemma::ProcessRestartBench(dir));
  if (runs > 0) {
    auto ms = gemma::LatencyBench(static_cast<int>(runs));
    if (!ms.empty()) {
      std::sort(ms.begin(), ms.end());
      std::cout << absl::StrFormat(
          "submit-to-running, idle cluster (%d runs): median %.1f ms, p90 %.1f "
          "ms, max %.1f ms\n",
          ms.size(), ms[ms.size() / 2], ms[ms.size() * 9 / 10], ms.back());
    }
  }
  return 0;
}
