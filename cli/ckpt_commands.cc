// gemmactl ckpt list | get | pin | unpin | rm
#include <iomanip>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/cli.h"
#include "gemma/v1/checkpoints.grpc.pb.h"

namespace gemma::cli {
namespace {

namespace v1 = ::gemma::v1;

std::string StateOf(const v1::Checkpoint& c) {
  switch (c.state()) {
    case v1::CHECKPOINT_STATE_WRITING:
      return "WRITING";
    case v1::CHECKPOINT_STATE_COMMITTED:
      return "COMMITTED";
    case v1::CHECKPOINT_STATE_DELETING:
      return "DELETING";
    default:
      return "-";
  }
}

void PrintTable(const std::vector<v1::Checkpoint>& cs) {
  std::cout << std::left << std::setw(36) << "NAME" << std::setw(11) << "STATE"
            << std::setw(8) << "PINNED" << std::setw(8) << "RANKS"
            << std::setw(12) << "BYTES"
            << "PATH\n";
  for (const auto& c : cs) {
    std::cout << std::left << std::setw(36) << c.name() << std::setw(11)
              << StateOf(c) << std::setw(8) << (c.pinned() ? "yes" : "no")
              << std::setw(8)
              << absl::StrCat(c.ranks_reported(), "/", c.world())
              << std::setw(12) << c.bytes() << c.path() << "\n";
  }
}

int Ckpt(int argc, char** argv) {
  CommonFlags common;
  FlagSet flags("gemmactl ckpt",
                "Checkpoints in the catalog: ckpt list [JOB] | get NAME | pin "
                "NAME | unpin NAME "
                "| rm NAME\n(NAME is jobs/{job}/checkpoints/{step}).");
  common.Register(flags);
  flags.Positional("ACTION [ARG]",
                   "list [JOB], get NAME, pin NAME, unpin NAME, rm NAME");
  flags.Epilog(
      "Examples:\n"
      "  gemmactl ckpt list j-000001\n"
      "  gemmactl ckpt pin jobs/j-000001/checkpoints/200\n"
      "  gemmactl ckpt rm jobs/j-000001/checkpoints/100");
  if (auto exit_code = ParseOrExit(flags, argc, argv, common))
    return *exit_code;
  const auto& pos = flags.positional();
  if (pos.empty()) {
    std::cerr
        << "gemmactl ckpt: expected an action: list, get, pin, unpin or rm\n";
    return 2;
  }
  const std::string& action = pos[0];
  auto stub = v1::CheckpointService::NewStub(common.Channel());
  grpc::ClientContext ctx;
  common.SetDeadline(ctx);
  if (action == "list") {
    v1::ListCheckpointsRequest req;
    if (pos.size() > 1) req.set_job(JobName(pos[1]));
    v1::ListCheckpointsResponse resp;
    grpc::Status s = stub->ListCheckpoints(&ctx, req, &resp);
    if (!s.ok()) return ReportRpcError("ckpt list", s, common);
    if (common.json()) {
      std::cout << ToJson(resp) << "\n";
    } else {
      PrintTable({resp.checkpoints().begin(), resp.checkpoints().end()});
    }
    return 0;
  }
  if (pos.size() != 2) {
    std::cerr << "gemmactl ckpt " << action << ": expected one NAME\n";
    return 2;
  }
  const std::string& name = pos[1];
  v1::Checkpoint c;
  grpc::Status s;
  if (action == "get") {
    v1::GetCheckpointRequest req;
    req.set_name(name);
    s = stub->GetCheckpoint(&ctx, req, &c);
  } else if (action == "pin") {
    v1::PinCheckpointRequest req;
    req.set_name(name);
    s = stub->PinCheckpoint(&ctx, req, &c);
  } else if (action == "unpin") {
    v1::UnpinCheckpointRequest req;
    req.set_name(name);
    s = stub->UnpinCheckpoint(&ctx, req, &c);
  } else if (action == "rm") {
    v1::DeleteCheckpointRequest req;
    req.set_name(name);
    v1::DeleteCheckpointResponse resp;
    s = stub->DeleteCheckpoint(&ctx, req, &resp);
    if (!s.ok()) return ReportRpcError("ckpt rm " + name, s, common);
    std::cout << (common.json() ? "{}" : "deleted " + name) << "\n";
    return 0;
  } else {
    std::cerr << "gemmactl ckpt: unknown action '" << action << "'\n";
    return 2;
  }
  if (!s.ok()) return ReportRpcError("ckpt " + action + " " + name, s, common);
  if (common.json()) {
    std::cout << ToJson(c) << "\n";
  } else {
    PrintTable({c});
  }
  return 0;
}

}  // namespace

std::vector<Command> CheckpointCommands() {
  return {{"ckpt", "List, inspect, pin, unpin or delete checkpoints", Ckpt}};
}

}  // namespace gemma::cli
