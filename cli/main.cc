// gemmactl: the command-line client of gemma-coordinator.
//
// gemmactl itself is control plane only (no LibTorch), so it starts in
// milliseconds. The offline commands that need LibTorch (`local`, `data`) live
// in gemmactl-local, built beside it; gemmactl hands them over with exec.
#include <limits.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <string>

#include "cli/cli.h"

namespace {

// The commands gemmactl-local serves, shown in gemmactl's help.
const std::vector<std::pair<std::string, std::string>> kLocalCommands = {
    {"local", "Offline model commands: convert, forward, generate, peft-merge, peft-export"},
    {"data", "Datasets: synth (a synthetic receipt-OCR dataset)"},
};

std::vector<gemma::cli::Command> AllCommands() {
  std::vector<gemma::cli::Command> all;
  for (auto& c : gemma::cli::JobCommands()) all.push_back(std::move(c));
  for (auto& c : gemma::cli::ClusterCommands()) all.push_back(std::move(c));
  for (auto& c : gemma::cli::CheckpointCommands()) all.push_back(std::move(c));
  all.push_back({"version", "Print gemmactl's version", [](int, char**) {
                   std::cout << "gemmactl " << GEMMA_VERSION << "\n";
                   return 0;
                 }});
  return all;
}

void PrintHelp(const std::vector<gemma::cli::Command>& cmds) {
  std::cout << "Usage: gemmactl COMMAND [flags]\n\n"
               "Talks to a gemma-coordinator (--coordinator HOST:PORT or "
               "GEMMA_COORDINATOR,\n"
               "default 127.0.0.1:7450). Every command has --help; -o json for "
               "programs.\n\n"
               "Commands:\n";
  for (const auto& c : cmds) {
    std::cout << "  " << std::left << std::setw(12) << c.name << c.summary << "\n";
  }
  for (const auto& [name, summary] : kLocalCommands) {
    std::cout << "  " << std::left << std::setw(12) << name << summary << "\n";
  }
  std::cout << "\nExamples:\n"
               "  gemmactl submit -f jobs/recipes/diagnose.yaml --set "
               "parallel.dp=2 --follow\n"
               "  gemmactl list --state running\n"
               "  gemmactl get j-000001\n"
               "  gemmactl status\n"
               "  gemmactl workers -o json\n"
               "  gemmactl local convert --from ~/models/gemma-3-4b-it --to /ckpt/g3 --tp 2\n";
}

// Runs gemmactl-local (beside this executable) with the same arguments.
int ExecLocal(char** argv) {
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::string dir = ".";
  if (n > 0) {
    self[n] = '\0';
    dir = self;
    dir = dir.substr(0, dir.rfind('/'));
  }
  const std::string local = dir + "/gemmactl-local";
  argv[0] = const_cast<char*>(local.c_str());
  execv(local.c_str(), argv);
  std::cerr << "gemmactl " << argv[1] << ": cannot run " << local << " ("
            << std::strerror(errno)
            << "); it is built with the LibTorch part (GEMMA_WITH_TORCH=ON)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const auto cmds = AllCommands();
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    PrintHelp(cmds);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : cmds) {
    if (c.name == argv[1]) return c.run(argc, argv);
  }
  for (const auto& [name, summary] : kLocalCommands) {
    if (name == argv[1]) return ExecLocal(argv);
  }
  std::cerr << "gemmactl: unknown command '" << argv[1] << "' (see gemmactl --help)\n";
  return 2;
}
