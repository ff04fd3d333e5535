// The three programs as a user runs them: --help, bad flags, a coordinator on
// a real loopback socket answering health checks and reflection.
#include <grpcpp/grpcpp.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_fixture.h"

namespace gemma::testing {
namespace {

using ::testing::HasSubstr;

std::vector<std::string> Programs() {
  std::vector<std::string> p = {"gemma-coordinator", "gemmactl"};
#ifdef GEMMA_WITH_TORCH_BUILD
  p.push_back("gemma-worker");
#endif
  return p;
}

TEST(ProgramsTest, EveryProgramAnswersHelpWithUsageAndExitZero) {
  for (const auto& prog : Programs()) {
    std::string out;
    EXPECT_EQ(RunProgram({BinPath(prog), "--help"}, &out), 0) << prog << ": " << out;
    EXPECT_THAT(out, HasSubstr("Usage: ")) << prog;
    EXPECT_THAT(out, HasSubstr("Examples")) << prog;
  }
}

TEST(ProgramsTest, EveryGemmactlCommandAnswersHelp) {
  for (const std::string cmd :
       {"workers", "status", "submit", "get", "list", "cancel", "logs", "watch", "ckpt"}) {
    std::string out;
    EXPECT_EQ(RunProgram({BinPath("gemmactl"), cmd, "--help"}, &out), 0) << cmd;
    EXPECT_THAT(out, HasSubstr("--coordinator")) << cmd;
    EXPECT_THAT(out, HasSubstr("--output")) << cmd;
  }
}

TEST(ProgramsTest, BadUsageExitsTwoAndNamesTheProblem) {
  std::string out;
  EXPECT_EQ(RunProgram({BinPath("gemma-coordinator"), "--no-such-flag"}, &out), 2);
  EXPECT_THAT(out, HasSubstr("--no-such-flag"));
  EXPECT_EQ(RunProgram({BinPath("gemmactl"), "frobnicate"}, &out), 2);
  EXPECT_THAT(out, HasSubstr("frobnicate"));
  EXPECT_EQ(RunProgram({BinPath("gemmactl"), "workers", "-o", "yaml"}, &out), 2);
  EXPECT_THAT(out, HasSubstr("--output"));
}

TEST(ProgramsTest, GemmactlSaysWhenTheCoordinatorIsUnreachable) {
  // Bind-and-release a port so nothing listens there.
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator());
  const int port = cluster.port();
  cluster.coordinator().Stop(SIGTERM);
  std::string out;
  const int rc = RunProgram({BinPath("gemmactl"), "status", "--coordinator",
                             "127.0.0.1:" + std::to_string(port), "--timeout-ms", "1500"},
                            &out);
  EXPECT_EQ(rc, 3) << out;
  EXPECT_THAT(out, HasSubstr("is gemma-coordinator running"));
}

TEST(CoordinatorTest, ServesHealthAndReflectionOnLoopback) {
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator()) << cluster.coordinator().Log();
  auto channel = grpc::CreateChannel(cluster.address(), grpc::InsecureChannelCredentials());

  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = health->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
  grpc::ClientContext rctx;
  rctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = reflection->ServerReflectionInfo(&rctx);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("");
  ASSERT_TRUE(stream->Write(req));
  grpc::reflection::v1alpha::ServerReflectionResponse rr;
  ASSERT_TRUE(stream->Read(&rr));
  std::vector<std::string> names;
  for (const auto& svc : rr.list_services_response().service()) names.push_back(svc.name());
  EXPECT_THAT(names, ::testing::IsSupersetOf({"gemma.v1.JobService",
                                               "gemma.v1.CheckpointService",
                                               "gemma.v1.ClusterService",
                                               "gemma.v1.WorkerSession",
                                               "grpc.health.v1.Health"}));
  stream->WritesDone();
  stream->Finish();

  // A clean shutdown on SIGTERM.
  EXPECT_EQ(cluster.coordinator().Stop(SIGTERM), 0) << cluster.coordinator().Log();
}

TEST(CoordinatorTest, SecondCoordinatorOnABusyPortFailsClearly) {
  LocalCluster first;
  ASSERT_TRUE(first.StartCoordinator());
  std::string out;
  const int rc = RunProgram(
      {BinPath("gemma-coordinator"), "--listen", first.address(), "--data-dir",
       first.dir() + "/second-data"},
      &out, absl::Seconds(20));
  EXPECT_EQ(rc, 1) << out;
  EXPECT_THAT(out, HasSubstr("cannot listen on " + first.address()));
}

TEST(CoordinatorTest, SecondCoordinatorOnTheSameDataDirFailsClearly) {
  LocalCluster first;
  ASSERT_TRUE(first.StartCoordinator());
  std::string out;
  const int rc = RunProgram({BinPath("gemma-coordinator"), "--listen", "127.0.0.1:0",
                             "--data-dir", first.dir() + "/data"},
                            &out, absl::Seconds(20));
  EXPECT_EQ(rc, 1) << out;
  EXPECT_THAT(out, HasSubstr("is another coordinator using this --data-dir?"));
}

TEST(CoordinatorTest, GemmactlStatusAndJsonOutput) {
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator());
  std::string out;
  ASSERT_EQ(cluster.Ctl({"status"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("workers: 0 attached"));
  ASSERT_EQ(cluster.Ctl({"status", "-o", "json"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("\"workers_total\": 0"));
}

}  // namespace
}  // namespace gemma::testing
