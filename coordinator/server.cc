#include "coordinator/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "coordinator/worker_registry.h"
#include "gemma/v1/cluster.grpc.pb.h"
#include "gemma/v1/worker_session.grpc.pb.h"

namespace gemma {

namespace v1 = ::gemma::v1;

class CoordinatorServer::ClusterServiceImpl final : public v1::ClusterService::Service {
 public:
  ClusterServiceImpl(WorkerRegistry* registry, absl::Time started)
      : registry_(registry), started_(started) {}

  grpc::Status ListWorkers(grpc::ServerContext*, const v1::ListWorkersRequest*,
                           v1::ListWorkersResponse* resp) override {
    for (auto& w : registry_->List()) *resp->add_workers() = std::move(w);
    return grpc::Status::OK;
  }

  grpc::Status GetClusterStatus(grpc::ServerContext*, const v1::GetClusterStatusRequest*,
                                v1::ClusterStatus* resp) override {
    const int n = registry_->size();
    resp->set_workers_total(n);
    resp->set_workers_free(n);
    resp->set_coordinator_version(GEMMA_VERSION);
    resp->set_uptime_seconds(absl::ToInt64Seconds(absl::Now() - started_));
    return grpc::Status::OK;
  }

 private:
  WorkerRegistry* registry_;
  absl::Time started_;
};

class CoordinatorServer::WorkerSessionImpl final : public v1::WorkerSession::Service {
 public:
  WorkerSessionImpl(WorkerRegistry* registry, absl::Duration heartbeat)
      : registry_(registry), heartbeat_(heartbeat) {}

  grpc::Status Attach(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<v1::CoordinatorMessage, v1::WorkerMessage>* stream) override {
    std::string name;
    v1::WorkerMessage msg;
    while (stream->Read(&msg)) {
      if (msg.has_register_()) {
        if (!name.empty()) {
          return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                              "worker sent Register twice on one session");
        }
        name = registry_->Attach(msg.register_().worker());
        GEMMA_LOG(INFO) << "worker attached: " << name << " from " << ctx->peer();
        v1::CoordinatorMessage reply;
        reply.mutable_registered()->set_worker_name(name);
        reply.mutable_registered()->set_heartbeat_interval_ms(
            static_cast<int32_t>(absl::ToInt64Milliseconds(heartbeat_)));
        stream->Write(reply);
      } else if (msg.has_heartbeat()) {
        if (name.empty()) {
          return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                              "heartbeat before Register");
        }
        registry_->Heartbeat(name, absl::ToUnixSeconds(absl::Now()));
      }
    }
    if (!name.empty()) {
      registry_->Detach(name);
      GEMMA_LOG(INFO) << "worker detached: " << name;
    }
    return grpc::Status::OK;
  }

 private:
  WorkerRegistry* registry_;
  absl::Duration heartbeat_;
};

CoordinatorServer::CoordinatorServer(CoordinatorOptions options)
    : options_(std::move(options)),
      started_(absl::Now()),
      registry_(std::make_unique<WorkerRegistry>()),
      cluster_service_(std::make_unique<ClusterServiceImpl>(registry_.get(), started_)),
      worker_session_(std::make_unique<WorkerSessionImpl>(registry_.get(),
                                                          options_.heartbeat_interval)) {}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

absl::Status CoordinatorServer::Start() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC turns SO_REUSEPORT on by default, which lets a second coordinator
  // share our port silently; one coordinator per address.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(options_.listen, grpc::InsecureServerCredentials(), &port_);
  builder.RegisterService(cluster_service_.get());
  builder.RegisterService(worker_session_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    server_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen,
                     " (address in use or not a local address?)"));
  }
  server_->GetHealthCheckService()->SetServingStatus(true);
  return absl::OkStatus();
}

void CoordinatorServer::Wait() {
  if (server_) server_->Wait();
}

void CoordinatorServer::Shutdown() {
  if (server_) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
}

}  // namespace gemma
