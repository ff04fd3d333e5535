#include <google/protobuf/util/json_util.h>

#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/cli.h"

namespace gemma::cli {

void CommonFlags::Register(FlagSet& flags) {
  flags.String("coordinator", &coordinator, "the coordinator's gRPC address")
      .Meta("HOST:PORT")
      .Env("GEMMA_COORDINATOR");
  AddOutputFlag(flags, &output);
  flags.Int("timeout-ms", &timeout_ms, "deadline of each call");
}

std::shared_ptr<grpc::Channel> CommonFlags::Channel() const {
  return grpc::CreateChannel(coordinator, grpc::InsecureChannelCredentials());
}

void CommonFlags::SetDeadline(grpc::ClientContext& ctx) const {
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(timeout_ms));
}

int ReportRpcError(const std::string& what, const grpc::Status& status,
                   const CommonFlags& common) {
  const bool unreachable =
      status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  std::cerr << "gemmactl: " << what << ": " << status.error_message();
  if (unreachable) {
    std::cerr << " (is gemma-coordinator running at " << common.coordinator
              << "? set --coordinator or GEMMA_COORDINATOR)";
  }
  std::cerr << "\n";
  return unreachable ? 3 : 1;
}

FlagSet::Flag& AddOutputFlag(FlagSet& flags, std::string* output) {
  return flags.String("output", output, "output format: table or json")
      .Short('o')
      .Meta("FORMAT");
}

std::optional<int> CheckOutputFlag(const FlagSet& flags,
                                   const std::string& output) {
  if (output == "table" || output == "json") return std::nullopt;
  return flags.UsageError(
      absl::StrCat("--output must be table or json, not '", output, "'"));
}

std::optional<int> ParseOrExit(FlagSet& flags, int argc, char** argv,
                               const CommonFlags& common) {
  flags.ErrorPrefix("gemmactl");
  if (auto exit_code = flags.ParseOrExit(argc, argv, 2)) return exit_code;
  return CheckOutputFlag(flags, common.output);
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.always_print_primitive_fields = true;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return out;
}

std::string JobName(const std::string& arg) {
  return arg.rfind("jobs/", 0) == 0 ? arg : "jobs/" + arg;
}

}  // namespace gemma::cli
