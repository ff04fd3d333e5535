#include "cli/local.h"

#include <cstring>
#include <iostream>

#include "cli/local_convert.h"
#include "cli/local_forward.h"

namespace gemma::cli {

Command LocalCommand() {
  return {"local", "Offline model commands: convert, forward, generate, peft-merge, peft-export",
          [](int argc, char** argv) {
            const char* sub = argc >= 3 ? argv[2] : "";
            if (!std::strcmp(sub, "convert")) return LocalConvert(argc, argv);
            if (!std::strcmp(sub, "forward")) return LocalForwardMain(argc, argv);
            if (!std::strcmp(sub, "generate")) return LocalGenerateMain(argc, argv);
            const bool help = !std::strcmp(sub, "--help") || !std::strcmp(sub, "-h");
            (help ? std::cout : std::cerr)
                << "Usage: gemmactl local SUBCOMMAND [flags]\n\n"
                   "Runs on this machine, without a coordinator.\n\n"
                   "Subcommands:\n"
                   "  convert      convert HF Gemma 3 folders <-> our sharded checkpoints\n"
                   "  forward      run one forward pass and write the logits\n"
                   "  generate     decode: text + images in, text out; or token ids in and out\n"
                   "  peft-merge   fold a peft job's adapters into a full checkpoint\n"
                   "  peft-export  write a peft job's adapters as a Hugging Face PEFT adapter\n\n"
                   "Examples:\n"
                   "  gemmactl local convert --from ~/models/gemma-3-4b-it --to /ckpt/g3 --tp 2\n"
                   "  gemmactl local generate --model /ckpt/g3 --prompt-ids 2,105,2364,107\n";
            if (!help && *sub) std::cerr << "\ngemmactl local: unknown subcommand '" << sub << "'\n";
            return help ? 0 : 2;
          }};
}

}  // namespace gemma::cli
