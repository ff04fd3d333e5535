#include "tests/integration/subprocess.h"

#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace gemma::testing {

namespace {

int ExitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

Subprocess::Subprocess(std::vector<std::string> argv, std::string log_path,
                       std::vector<std::string> env)
    : log_path_(std::move(log_path)) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e) env_store.emplace_back(*e);
  for (auto& e : env) env_store.push_back(e);
  std::vector<char*> envp;
  for (auto& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);
  if (posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), envp.data()) != 0) pid_ = -1;
  posix_spawn_file_actions_destroy(&fa);
}

Subprocess::~Subprocess() {
  if (pid_ > 0 && !exited_) Stop(SIGKILL, absl::Seconds(5));
}

bool Subprocess::running() {
  if (pid_ <= 0 || exited_) return false;
  int st = 0;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    exited_ = true;
    status_ = st;
    return false;
  }
  return true;
}

int Subprocess::Wait(absl::Duration timeout) {
  const absl::Time until = absl::Now() + timeout;
  while (running()) {
    if (absl::Now() > until) return -1;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return exited_ ? ExitCodeOf(status_) : -1;
}

int Subprocess::Stop(int sig, absl::Duration timeout) {
  if (pid_ <= 0) return -1;
  if (running()) kill(pid_, sig);
  return Wait(timeout);
}

std::string Subprocess::Log() const { return ReadFile(log_path_); }

int RunProgram(const std::vector<std::string>& argv, std::string* output,
               absl::Duration timeout, const std::vector<std::string>& env) {
  const std::string dir = MakeTempDir("run");
  const std::string log = dir + "/out.log";
  int rc;
  {
    Subprocess p(argv, log, env);
    rc = p.Wait(timeout);
    if (rc < 0) rc = p.Stop(SIGKILL);
  }
  if (output) *output = ReadFile(log);
  RemoveTree(dir);
  return rc;
}

void RemoveTree(const std::string& path) {
  // POSIX nftw, not std::filesystem: libtorch.so exports its own copy of
  // std::filesystem, which crashes in processes that link it.
  nftw(
      path.c_str(),
      [](const char* p, const struct stat*, int, struct FTW*) {
        ::remove(p);  // best effort: keep going past what cannot be removed
        return 0;
      },
      64, FTW_DEPTH | FTW_PHYS);
}

bool CurrentTestFailed() {
  const auto* info = ::testing::UnitTest::GetInstance();
  return info->current_test_info() != nullptr && info->current_test_info()->result()->Failed();
}

bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout) {
  const absl::Time until = absl::Now() + timeout;
  while (absl::Now() < until) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return pred();
}

std::string MakeTempDir(const std::string& prefix) {
  const char* base = getenv("TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/gemma-" + prefix + "-XXXXXX";
  char* made = mkdtemp(tmpl.data());
  return made ? std::string(made) : std::string();
}

std::string BinPath(const std::string& program) {
  const char* dir = getenv("GEMMA_BIN_DIR");
  return std::string(dir ? dir : ".") + "/" + program;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace gemma::testing
