// gemmactl workers | status
#include <google/protobuf/util/json_util.h>

#include <iomanip>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli/cli.h"
#include "gemma/v1/cluster.grpc.pb.h"

namespace gemma::cli {
namespace {

namespace v1 = ::gemma::v1;

int Workers(int argc, char** argv) {
  CommonFlags common;
  FlagSet flags("gemmactl workers",
                "List the workers attached to the coordinator.");
  common.Register(flags);
  flags.Epilog("Example:\n  gemmactl workers -o json");
  if (auto exit_code = ParseOrExit(flags, argc, argv, common))
    return *exit_code;
  auto stub = v1::ClusterService::NewStub(common.Channel());
  grpc::ClientContext ctx;
  common.SetDeadline(ctx);
  v1::ListWorkersResponse resp;
  grpc::Status s = stub->ListWorkers(&ctx, v1::ListWorkersRequest(), &resp);
  if (!s.ok()) return ReportRpcError("list workers", s, common);
  if (common.json()) {
    std::cout << ToJson(resp) << "\n";
    return 0;
  }
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  std::cout << std::left << std::setw(18) << "NAME" << std::setw(20) << "HOST"
            << std::setw(10) << "DEVICE" << std::setw(8) << "PID"
            << std::setw(10) << "SLURM" << std::setw(12) << "HEARTBEAT"
            << "RUNNING\n";
  for (const auto& w : resp.workers()) {
    const std::string dev = w.device_kind() == "cuda"
                                ? absl::StrCat("cuda:", w.device_index())
                                : absl::StrCat("cpu x", w.cpu_slots());
    const std::string hb =
        w.last_heartbeat_unix() > 0
            ? absl::StrCat(now - w.last_heartbeat_unix(), "s ago")
            : "-";
    std::cout << std::left << std::setw(18) << w.name() << std::setw(20)
              << w.host() << std::setw(10) << dev << std::setw(8) << w.pid()
              << std::setw(10)
              << (w.slurm_job_id().empty() ? "-" : w.slurm_job_id())
              << std::setw(12) << hb
              << (w.job().empty() ? "-"
                                  : absl::StrCat(w.job(), " rank ", w.rank()))
              << "\n";
  }
  return 0;
}

void PrintStatus(const v1::ClusterStatus& resp, const CommonFlags& common) {
  if (common.json()) {
    std::cout << ToJson(resp) << "\n";
    std::cout.flush();
    return;
  }
  std::cout << "coordinator " << common.coordinator << " (version "
            << resp.coordinator_version() << ", up " << resp.uptime_seconds()
            << "s"
            << (resp.in_grace_period() ? ", waiting for workers to re-attach"
                                       : "")
            << ")\n"
            << "workers: " << resp.workers_total() << " attached, "
            << resp.workers_free() << " free, " << resp.workers_busy()
            << " busy\n"
            << "gpu: " << resp.gpu_free() << " free, " << resp.gpu_used()
            << " used; cpu: " << resp.cpu_free() << " free, " << resp.cpu_used()
            << " used\n"
            << "jobs: " << resp.jobs_running() << " running, "
            << resp.jobs_queued() << " queued\n";
  for (const auto& q : resp.queued()) {
    std::cout << "  " << q.job() << " (" << q.world()
              << " ranks) waits: " << q.waiting_reason() << "\n";
  }
  std::cout.flush();
}

int Status(int argc, char** argv) {
  CommonFlags common;
  bool watch = false;
  FlagSet flags("gemmactl status",
                "Show the cluster's capacity (free/used), queued jobs and why "
                "they wait, and the\n"
                "coordinator's health.");
  common.Register(flags);
  flags
      .Bool("watch", &watch,
            "print the status again after every change (Ctrl-C to stop)")
      .Short('w');
  flags.Epilog(
      "Examples:\n  gemmactl status\n  gemmactl status --watch -o json");
  if (auto exit_code = ParseOrExit(flags, argc, argv, common))
    return *exit_code;
  auto stub = v1::ClusterService::NewStub(common.Channel());
  if (watch) {
    grpc::ClientContext ctx;
    auto reader = stub->WatchCluster(&ctx, v1::WatchClusterRequest());
    v1::ClusterStatus resp;
    while (reader->Read(&resp)) {
      if (!common.json()) std::cout << "---\n";
      PrintStatus(resp, common);
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) return ReportRpcError("watch cluster", s, common);
    return 0;
  }
  grpc::ClientContext ctx;
  common.SetDeadline(ctx);
  v1::ClusterStatus resp;
  grpc::Status s =
      stub->GetClusterStatus(&ctx, v1::GetClusterStatusRequest(), &resp);
  if (!s.ok()) return ReportRpcError("cluster status", s, common);
  PrintStatus(resp, common);
  return 0;
}

}  // namespace

std::vector<Command> ClusterCommands() {
  return {
      {"workers", "List the attached workers", Workers},
      {"status", "Show cluster capacity and coordinator health", Status},
  };
}

}  // namespace gemma::cli
