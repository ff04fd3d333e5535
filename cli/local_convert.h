// gemmactl local ...: offline commands that run on this machine without a
// coordinator (they need the LibTorch build). Today: `local convert`.
#ifndef GEMMA_CLI_LOCAL_CONVERT_H_
#define GEMMA_CLI_LOCAL_CONVERT_H_

#include "cli/cli.h"

namespace gemma::cli {

// `gemmactl local convert --from DIR --to DIR [--tp N] [--to-format ours|hf]
// [-o json]`. argv[0] is "gemmactl", argv[1] "local", argv[2] "convert". Exit
// codes: 0 ok, 1 the conversion failed, 2 bad usage.
int LocalConvert(int argc, char** argv);

}  // namespace gemma::cli

#endif  // GEMMA_CLI_LOCAL_CONVERT_H_
