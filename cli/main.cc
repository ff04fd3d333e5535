// gemmactl: the command-line client of gemma-coordinator.
#include <cstring>
#include <iomanip>
#include <iostream>

#include "cli/cli.h"
#ifdef GEMMA_WITH_LOCAL
#include "cli/local.h"
#endif
#ifdef GEMMA_CLI_WITH_DATA
#include "cli/local_data.h"
#endif

namespace {

std::vector<gemma::cli::Command> AllCommands() {
  std::vector<gemma::cli::Command> all;
  for (auto& c : gemma::cli::JobCommands()) all.push_back(std::move(c));
  for (auto& c : gemma::cli::ClusterCommands()) all.push_back(std::move(c));
  for (auto& c : gemma::cli::CheckpointCommands()) all.push_back(std::move(c));
#ifdef GEMMA_WITH_LOCAL
  all.push_back(gemma::cli::LocalCommand());
#endif
#ifdef GEMMA_CLI_WITH_DATA
  for (auto& c : gemma::cli::LocalDataCommands()) all.push_back(std::move(c));
#endif
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
    std::cout << "  " << std::left << std::setw(12) << c.name << c.summary
              << "\n";
  }
  std::cout << "\nExamples:\n"
               "  gemmactl submit -f jobs/recipes/diagnose.yaml --set "
               "parallel.dp=2 --follow\n"
               "  gemmactl list --state running\n"
               "  gemmactl get j-000001\n"
               "  gemmactl status\n"
               "  gemmactl workers -o json\n";
}

}  // namespace

int main(int argc, char** argv) {
  const auto cmds = AllCommands();
  if (argc < 2 || !std::strcmp(argv[1], "--help") ||
      !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    PrintHelp(cmds);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : cmds) {
    if (c.name == argv[1]) return c.run(argc, argv);
  }
  std::cerr << "gemmactl: unknown command '" << argv[1]
            << "' (see gemmactl --help)\n";
  return 2;
}
