// `gemmactl local ...`: offline commands that run on this machine without a
// coordinator (they need the LibTorch build).
//
//   gemmactl local convert  --from DIR --to DIR [--tp N] [--to-format ours|hf]
//   gemmactl local forward  --model DIR --inputs FILE --out FILE
//   gemmactl local generate --model DIR --prompt-ids 2,105,... [--max-new-tokens N]
#ifndef GEMMA_CLI_LOCAL_H_
#define GEMMA_CLI_LOCAL_H_

#include "cli/cli.h"

namespace gemma::cli {

// The "local" command: dispatches to its subcommands. argv[2] is the subcommand.
Command LocalCommand();

}  // namespace gemma::cli

#endif  // GEMMA_CLI_LOCAL_H_
