#include "tests/integration/cluster_fixture.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace gemma::testing {

LocalCluster::LocalCluster() : dir_(MakeTempDir("cluster")) {}

LocalCluster::~LocalCluster() {
  workers_.clear();  // each Subprocess kills its process
  coordinator_.reset();
  if (CurrentTestFailed()) {
    std::fprintf(stderr, "cluster files kept in %s\n", dir_.c_str());
  } else {
    RemoveTree(dir_);
  }
}

bool LocalCluster::StartCoordinator(
    const std::vector<std::string>& extra_args) {
  const std::string port_file = dir_ + "/coordinator.port";
  unlink(port_file.c_str());
  // The same data dir on every start: a restart finds what it left.
  std::vector<std::string> argv = {BinPath("gemma-coordinator"),
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--port-file",
                                   port_file,
                                   "--data-dir",
                                   dir_ + "/data"};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  coordinator_ = std::make_unique<Subprocess>(
      argv, absl::StrCat(dir_, "/coordinator-", ++coordinator_starts_, ".log"));
  const bool up = WaitFor(
      [&] {
        std::string text = ReadFile(port_file);
        return absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port_) &&
               port_ > 0;
      },
      absl::Seconds(20));
  return up && coordinator_->running();
}

Subprocess& LocalCluster::StartWorker(
    const std::vector<std::string>& extra_args,
    const std::vector<std::string>& env) {
  std::vector<std::string> argv = {BinPath("gemma-worker"), "--coordinator",
                                   address(), "--device", "cpu"};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  workers_.push_back(std::make_unique<Subprocess>(
      argv, absl::StrCat(dir_, "/worker-", workers_.size(), ".log"), env));
  return *workers_.back();
}

std::string LocalCluster::WriteRecipe(const std::string& name,
                                      const std::string& yaml) {
  const std::string path = dir_ + "/" + name;
  std::ofstream(path) << yaml;
  return path;
}

int LocalCluster::Ctl(std::vector<std::string> args, std::string* output) {
  args.insert(args.begin(), BinPath("gemmactl"));
  args.push_back("--coordinator");
  args.push_back(address());
  return RunProgram(args, output);
}

}  // namespace gemma::testing
