// Test helper: start a program as a real child process, with its output in a
// log file, and stop it (SIGTERM or SIGKILL). The destructor kills what is left.
#ifndef GEMMA_TESTS_INTEGRATION_SUBPROCESS_H_
#define GEMMA_TESTS_INTEGRATION_SUBPROCESS_H_

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace gemma::testing {

class Subprocess {
 public:
  // Starts `argv` (argv[0] is a path) with stdout and stderr to `log_path`.
  // Extra environment entries ("K=V") are added to the parent's.
  Subprocess(std::vector<std::string> argv, std::string log_path,
             std::vector<std::string> env = {});
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Sends `sig`; then waits up to `timeout` for exit. Returns the exit status
  // as from waitpid (or -1 if it did not exit).
  int Stop(int sig, absl::Duration timeout = absl::Seconds(10));
  // Waits for exit; returns the exit code (128+signal when killed), -1 on timeout.
  int Wait(absl::Duration timeout);
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  bool exited_ = false;
  std::string log_path_;
};

// Runs a program to completion; returns its exit code and fills `output`
// with stdout+stderr.
int RunProgram(const std::vector<std::string>& argv, std::string* output,
               absl::Duration timeout = absl::Seconds(60),
               const std::vector<std::string>& env = {});

// Polls `pred` every 50 ms until it is true or `timeout` passes.
bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout);

// A fresh temporary directory under $TMPDIR (removed by the caller if wanted).
std::string MakeTempDir(const std::string& prefix);

// Removes `path` and everything under it (no-op when absent).
void RemoveTree(const std::string& path);

// True when the test that is running has failed so far (keep its files).
bool CurrentTestFailed();

// Path of one of our built programs (from GEMMA_BIN_DIR).
std::string BinPath(const std::string& program);

std::string ReadFile(const std::string& path);

}  // namespace gemma::testing

#endif  // GEMMA_TESTS_INTEGRATION_SUBPROCESS_H_
