// The coordinator's gRPC server: JobService, ClusterService,
// CheckpointService and WorkerSession, with grpc.health.v1 and server
// reflection turned on. Wiring: the Scheduler actor owns the ControlState
// (coordinator/control.h) over the RocksDB Store; a WorkerActor per attached
// worker writes to its session stream; a JobActor per job takes its ranks'
// progress and logs. Handlers are thin: they check request shape, ask the
// Scheduler actor, and map absl::Status codes one to one onto gRPC codes.
#ifndef GEMMA_COORDINATOR_SERVER_H_
#define GEMMA_COORDINATOR_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace grpc {
class Server;
}

namespace gemma {

struct CoordinatorOptions {
  // "HOST:PORT"; port 0 picks a free port (see CoordinatorServer::port()).
  std::string listen = "127.0.0.1:7450";
  // RocksDB folder (created when missing).
  std::string data_dir = "gemma-coordinator-data";
  // How often workers are asked to send heartbeats.
  absl::Duration heartbeat_interval = absl::Seconds(2);
  // A worker silent for this long is lost; 0 means 5 heartbeat intervals.
  absl::Duration lease = absl::ZeroDuration();
  // After a restart: how long running attempts wait for their workers.
  absl::Duration grace = absl::Seconds(15);
  // How often leases, hangs and backoffs are checked.
  absl::Duration tick = absl::Milliseconds(100);
  // Largest request accepted (bigger ones get RESOURCE_EXHAUSTED).
  int max_message_bytes = 4 << 20;
  // Default checkpoint folder of training jobs (ControlOptions); empty:
  // DATA_DIR/checkpoints.
  std::string checkpoint_root;
};

class CoordinatorServer {
 public:
  explicit CoordinatorServer(CoordinatorOptions options);
  ~CoordinatorServer();

  // Opens the store, recovers, binds and starts serving. UNAVAILABLE when the
  // address cannot be bound or the data dir is locked by another process.
  absl::Status Start();
  // The bound port (valid after Start()).
  int port() const { return port_; }
  // Blocks until Shutdown() is called from another thread.
  void Wait();
  // Stops accepting calls and ends open streams; idempotent.
  void Shutdown();

  class Impl;

 private:
  CoordinatorOptions options_;
  int port_ = 0;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<grpc::Server> server_;
  std::thread ticker_;
  std::atomic<bool> stopping_{false};
};

}  // namespace gemma

#endif  // GEMMA_COORDINATOR_SERVER_H_
