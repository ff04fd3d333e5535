// The coordinator's gRPC server: wires the services to their managers and
// serves them, with grpc.health.v1 and server reflection turned on.
#ifndef GEMMA_COORDINATOR_SERVER_H_
#define GEMMA_COORDINATOR_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace grpc {
class Server;
}

namespace gemma {

class WorkerRegistry;

struct CoordinatorOptions {
  // "HOST:PORT"; port 0 picks a free port (see CoordinatorServer::port()).
  std::string listen = "127.0.0.1:7450";
  // How often workers are asked to send heartbeats.
  absl::Duration heartbeat_interval = absl::Seconds(2);
};

class CoordinatorServer {
 public:
  explicit CoordinatorServer(CoordinatorOptions options);
  ~CoordinatorServer();

  // Binds and starts serving. UNAVAILABLE when the address cannot be bound.
  absl::Status Start();
  // The bound port (valid after Start()).
  int port() const { return port_; }
  // Blocks until Shutdown() is called from another thread.
  void Wait();
  // Stops accepting calls and ends open streams; idempotent.
  void Shutdown();

 private:
  class ClusterServiceImpl;
  class WorkerSessionImpl;

  CoordinatorOptions options_;
  int port_ = 0;
  absl::Time started_;
  std::unique_ptr<WorkerRegistry> registry_;
  std::unique_ptr<ClusterServiceImpl> cluster_service_;
  std::unique_ptr<WorkerSessionImpl> worker_session_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace gemma

#endif  // GEMMA_COORDINATOR_SERVER_H_
