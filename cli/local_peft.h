// `gemmactl local peft-merge` and `gemmactl local peft-export`: offline
// commands on adapter checkpoints (model/lora.h) written by a peft job.
//
//   gemmactl local peft-merge  --adapter DIR --out DIR [--base DIR] [--tp N]
//       folds the adapters into the base weights and writes a full sharded
//       checkpoint (manifest.json + rank files), stored dtype of the base.
//   gemmactl local peft-export --adapter DIR --out DIR [--base DIR]
//       [--base-name NAME]
//       writes a Hugging Face PEFT adapter folder (adapter_config.json +
//       adapter_model.safetensors) for the HF export of the base model.
// --base defaults to the base model recorded in the adapter checkpoint. Both
// take -o json. Exit codes: 0 ok, 1 the work failed, 2 bad usage.
#ifndef GEMMA_CLI_LOCAL_PEFT_H_
#define GEMMA_CLI_LOCAL_PEFT_H_

namespace gemma::cli {

// argv[0] is "gemmactl", argv[1] "local", argv[2] the subcommand.
int LocalPeftMerge(int argc, char** argv);
int LocalPeftExport(int argc, char** argv);

}  // namespace gemma::cli

#endif  // GEMMA_CLI_LOCAL_PEFT_H_
