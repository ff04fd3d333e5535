// gemmactl's offline data commands (built with GEMMA_WITH_TORCH):
//   gemmactl data synth --kind ocr --out DIR --n N [--seed S] [--image-size N]
#ifndef GEMMA_CLI_LOCAL_DATA_H_
#define GEMMA_CLI_LOCAL_DATA_H_

#include <vector>

#include "cli/cli.h"

namespace gemma::cli {

std::vector<Command> LocalDataCommands();

}  // namespace gemma::cli

#endif  // GEMMA_CLI_LOCAL_DATA_H_
