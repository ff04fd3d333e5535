// gemma-coordinator: the control plane's one process.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/signals.h"
#include "coordinator/server.h"

int main(int argc, char** argv) {
  gemma::SetLogTag("coordinator");
  gemma::CoordinatorOptions options;
  std::string port_file;
  int64_t heartbeat_ms = 2000;
  int64_t lease_ms = 0;
  int64_t grace_ms = 15000;
  int64_t tick_ms = 100;
  gemma::FlagSet flags(
      "gemma-coordinator",
      "Runs the Gemma job orchestrator's control plane: the gRPC API for\n"
      "gemmactl and dashboards, and the sessions of gemma-worker processes.");
  flags
      .String("listen", &options.listen,
              "address to serve gRPC on; port 0 picks a free one")
      .Meta("HOST:PORT")
      .Env("GEMMA_LISTEN");
  flags
      .String("port-file", &port_file,
              "write the bound port to this file once serving (for scripts and "
              "tests)")
      .Meta("PATH");
  flags.Int("heartbeat-ms", &heartbeat_ms,
            "heartbeat interval asked of workers");
  flags
      .String(
          "data-dir", &options.data_dir,
          "RocksDB folder with jobs, attempts, workers, checkpoints and events")
      .Meta("DIR")
      .Env("GEMMA_DATA_DIR");
  flags
      .String("checkpoint-root", &options.checkpoint_root,
              "where training jobs without checkpoint.root write their steps "
              "(ROOT/<job id>; on a shared file system for several hosts); "
              "default DATA_DIR/checkpoints")
      .Meta("DIR")
      .Env("GEMMA_CHECKPOINT_ROOT");
  flags.Int("lease-ms", &lease_ms,
            "a worker silent this long is lost and its attempt fails (0: 5 "
            "heartbeats)");
  flags.Int("grace-ms", &grace_ms,
            "after a restart, how long running attempts wait for their workers "
            "to re-attach");
  flags.Int("tick-ms", &tick_ms,
            "how often leases, hangs and backoffs are checked");
  flags.Epilog(
      "Examples:\n"
      "  gemma-coordinator                          # serve on 127.0.0.1:7450\n"
      "  gemma-coordinator --listen 0.0.0.0:7450    # serve the whole cluster\n"
      "  gemma-coordinator --data-dir /var/lib/gemma --grace-ms 30000\n"
      "  grpc_health_probe -addr 127.0.0.1:7450     # grpc.health.v1 is on");
  if (auto exit_code = flags.ParseOrExit(argc, argv)) return *exit_code;
  if (heartbeat_ms <= 0 || lease_ms < 0 || grace_ms < 0 || tick_ms <= 0) {
    return flags.UsageError(
        "--heartbeat-ms and --tick-ms must be > 0, --lease-ms and --grace-ms "
        ">= 0");
  }
  options.heartbeat_interval = absl::Milliseconds(heartbeat_ms);
  options.lease = absl::Milliseconds(lease_ms);
  options.grace = absl::Milliseconds(grace_ms);
  options.tick = absl::Milliseconds(tick_ms);

  const sigset_t signals = gemma::BlockTerminationSignals();
  gemma::CoordinatorServer server(options);
  absl::Status st = server.Start();
  if (!st.ok()) {
    std::cerr << "gemma-coordinator: " << st.message() << "\n";
    return 1;
  }
  GEMMA_LOG(INFO) << "serving on port " << server.port() << " ("
                  << options.listen << "), data in " << options.data_dir;
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << server.port() << "\n";
    }
    std::rename(tmp.c_str(), port_file.c_str());
  }
  std::thread signal_thread = gemma::OnTerminationSignal(signals, [&](int sig) {
    GEMMA_LOG(INFO) << "signal " << sig << ": shutting down";
    server.Shutdown();
  });
  server.Wait();
  signal_thread.join();
  return 0;
}
