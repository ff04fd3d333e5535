// `gemmactl local ...`: offline model commands on this machine (no
// coordinator).
//
//   gemmactl local forward  --model DIR --inputs FILE --out FILE
//   gemmactl local generate --model DIR --prompt-ids 2,105,...
//   [--max-new-tokens N]
//                           [--temperature T --top-k K --top-p P --seed S]
//
// A model DIR holds config.json (HF shape) and one or more *.safetensors files
// with the weights in OUR parameter names and layouts (MODEL_NAMES.md), any of
// F32/BF16/F16; they are loaded into fp32 on CPU. This header stays
// LibTorch-free (main.cc includes it); the model helpers are in
// cli/local_model.h.
#ifndef GEMMA_CLI_LOCAL_FORWARD_H_
#define GEMMA_CLI_LOCAL_FORWARD_H_

#include "cli/cli.h"

namespace gemma::cli {

int LocalForwardMain(int argc, char** argv);   // argv[2] == "forward"
int LocalGenerateMain(int argc, char** argv);  // argv[2] == "generate"

}  // namespace gemma::cli

#endif  // GEMMA_CLI_LOCAL_FORWARD_H_
