#include <iostream>

#include "cli/cli.h"

namespace gemma::cli {

void CommonFlags::Register(FlagSet& flags) {
  flags.String("coordinator", &coordinator, "the coordinator's gRPC address")
      .Meta("HOST:PORT")
      .Env("GEMMA_COORDINATOR");
  flags.String("output", &output, "output format: table or json").Short('o').Meta("FORMAT");
  flags.Int("timeout-ms", &timeout_ms, "deadline of each call");
}

std::shared_ptr<grpc::Channel> CommonFlags::Channel() const {
  return grpc::CreateChannel(coordinator, grpc::InsecureChannelCredentials());
}

void CommonFlags::SetDeadline(grpc::ClientContext& ctx) const {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
}

int ReportRpcError(const std::string& what, const grpc::Status& status,
                   const CommonFlags& common) {
  const bool unreachable = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  std::cerr << "gemmactl: " << what << ": " << status.error_message();
  if (unreachable) {
    std::cerr << " (is gemma-coordinator running at " << common.coordinator
              << "? set --coordinator or GEMMA_COORDINATOR)";
  }
  std::cerr << "\n";
  return unreachable ? 3 : 1;
}

}  // namespace gemma::cli
