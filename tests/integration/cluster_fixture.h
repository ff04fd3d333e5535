// A real coordinator process on a free loopback port, and worker processes
// attached to it, for integration tests.
#ifndef GEMMA_TESTS_INTEGRATION_CLUSTER_FIXTURE_H_
#define GEMMA_TESTS_INTEGRATION_CLUSTER_FIXTURE_H_

#include <memory>
#include <string>
#include <vector>

#include "tests/integration/subprocess.h"

namespace gemma::testing {

class LocalCluster {
 public:
  LocalCluster();
  // Stops what is still running; removes dir() unless the test failed
  // (then its logs and data stay for a look, and the path is printed).
  ~LocalCluster();
  // Starts gemma-coordinator on 127.0.0.1:0 with its data in dir()/data (the
  // same folder on every start); false if it did not come up.
  bool StartCoordinator(const std::vector<std::string>& extra_args = {});
  // Starts a CPU gemma-worker attached to the coordinator, with `env`
  // entries ("K=V") added to this process's environment.
  Subprocess& StartWorker(const std::vector<std::string>& extra_args = {},
                          const std::vector<std::string>& env = {});
  // Runs gemmactl with --coordinator set; returns the exit code.
  int Ctl(std::vector<std::string> args, std::string* output);

  // Writes `yaml` to dir()/name and returns the path.
  std::string WriteRecipe(const std::string& name, const std::string& yaml);
  Subprocess& worker(int i) { return *workers_[i]; }
  int num_workers() const { return static_cast<int>(workers_.size()); }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  const std::string& dir() const { return dir_; }
  Subprocess& coordinator() { return *coordinator_; }

 private:
  std::string dir_;
  int port_ = 0;
  int coordinator_starts_ = 0;
  std::unique_ptr<Subprocess> coordinator_;
  std::vector<std::unique_ptr<Subprocess>> workers_;
};

}  // namespace gemma::testing

#endif  // GEMMA_TESTS_INTEGRATION_CLUSTER_FIXTURE_H_
