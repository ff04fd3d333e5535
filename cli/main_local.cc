// gemmactl-local: the offline gemmactl commands that need LibTorch (`local`,
// `data`). Users run them as `gemmactl local ...` / `gemmactl data ...`;
// gemmactl execs this program with the same arguments.
#include <cstring>
#include <iostream>

#include "cli/local.h"
#include "cli/local_data.h"
#include "cli/local_peft.h"

int main(int argc, char** argv) {
  std::vector<gemma::cli::Command> cmds;
  cmds.push_back(gemma::cli::LocalCommand());
  for (auto& c : gemma::cli::LocalDataCommands()) cmds.push_back(std::move(c));
  if (argc >= 3 && !std::strcmp(argv[1], "local")) {  // cli/local_peft.h
    const char* sub = argv[2];
    using gemma::cli::LocalPeftExport, gemma::cli::LocalPeftMerge;
    if (!std::strcmp(sub, "peft-merge")) return LocalPeftMerge(argc, argv);
    if (!std::strcmp(sub, "peft-export")) return LocalPeftExport(argc, argv);
  }
  if (argc >= 2) {
    for (const auto& c : cmds) {
      if (c.name == argv[1]) return c.run(argc, argv);
    }
  }
  std::cerr << "Usage: gemmactl local|data SUBCOMMAND [flags] (see gemmactl --help)\n";
  return 2;
}
