// gemma-coordinator: the control plane's one process.
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "common/log.h"
#include "coordinator/server.h"

namespace {

sigset_t BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

}  // namespace

int main(int argc, char** argv) {
  gemma::SetLogTag("coordinator");
  gemma::CoordinatorOptions options;
  std::string port_file;
  int64_t heartbeat_ms = 2000;
  gemma::FlagSet flags("gemma-coordinator",
                       "Runs the Gemma job orchestrator's control plane: the gRPC API for\n"
                       "gemmactl and dashboards, and the sessions of gemma-worker processes.");
  flags.String("listen", &options.listen, "address to serve gRPC on; port 0 picks a free one")
      .Meta("HOST:PORT")
      .Env("GEMMA_LISTEN");
  flags.String("port-file", &port_file,
               "write the bound port to this file once serving (for scripts and tests)")
      .Meta("PATH");
  flags.Int("heartbeat-ms", &heartbeat_ms, "heartbeat interval asked of workers");
  flags.Epilog(
      "Examples:\n"
      "  gemma-coordinator                          # serve on 127.0.0.1:7450\n"
      "  gemma-coordinator --listen 0.0.0.0:7450    # serve the whole cluster\n"
      "  grpc_health_probe -addr 127.0.0.1:7450     # grpc.health.v1 is on");
  absl::Status st = flags.Parse(argc, argv);
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return 0;
  }
  if (!st.ok()) {
    std::cerr << "gemma-coordinator: " << st.message() << "\n";
    return 2;
  }
  options.heartbeat_interval = absl::Milliseconds(heartbeat_ms);

  sigset_t signals = BlockTerminationSignals();
  gemma::CoordinatorServer server(options);
  st = server.Start();
  if (!st.ok()) {
    std::cerr << "gemma-coordinator: " << st.message() << "\n";
    return 1;
  }
  GEMMA_LOG(INFO) << "serving on port " << server.port() << " (" << options.listen << ")";
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << server.port() << "\n";
    }
    std::rename(tmp.c_str(), port_file.c_str());
  }
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    GEMMA_LOG(INFO) << "signal " << sig << ": shutting down";
    server.Shutdown();
  });
  server.Wait();
  signal_thread.join();
  return 0;
}
