// gemmactl's pieces shared by its subcommands: the coordinator channel, output
// formats, and the subcommand table.
#ifndef GEMMA_CLI_CLI_H_
#define GEMMA_CLI_CLI_H_

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/flags.h"

namespace gemma::cli {

// Flags every remote subcommand takes.
struct CommonFlags {
  std::string coordinator = "127.0.0.1:7450";
  std::string output = "table";  // table | json
  int64_t timeout_ms = 10000;

  void Register(FlagSet& flags);
  bool json() const { return output == "json"; }
  // A channel to the coordinator; the deadline applies to each call.
  std::shared_ptr<grpc::Channel> Channel() const;
  void SetDeadline(grpc::ClientContext& ctx) const;
};

// Exit codes: 0 ok, 1 the operation failed, 2 bad usage, 3 coordinator
// unreachable.
int ReportRpcError(const std::string& what, const grpc::Status& status,
                   const CommonFlags& common);

struct Command {
  std::string name;
  std::string summary;
  // argv[0] is "gemmactl", argv[1] the command name.
  std::function<int(int argc, char** argv)> run;
};

std::vector<Command> ClusterCommands();
std::vector<Command> JobCommands();
std::vector<Command> CheckpointCommands();

// -o/--output FORMAT ("output format: table or json") bound to *output.
FlagSet::Flag& AddOutputFlag(FlagSet& flags, std::string* output);
// nullopt when `output` is table or json; else prints "--output must be table
// or json, not '...'" as a usage error of `flags` and returns its exit code.
std::optional<int> CheckOutputFlag(const FlagSet& flags,
                                   const std::string& output);

// Parses a subcommand's flags (argv[2..]) and checks --output; returns nullopt
// to go on, else the exit code (0 after --help, 2 for bad usage). Usage errors
// read "gemmactl: ...".
std::optional<int> ParseOrExit(FlagSet& flags, int argc, char** argv,
                               const CommonFlags& common);
// Indented JSON with proto field names.
std::string ToJson(const google::protobuf::Message& m);
// "j-1" -> "jobs/j-1"; "jobs/j-1" unchanged.
std::string JobName(const std::string& arg);

}  // namespace gemma::cli

#endif  // GEMMA_CLI_CLI_H_
