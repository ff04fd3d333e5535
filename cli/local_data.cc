// gemmactl data synth
#include "cli/local_data.h"

#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "data/synth.h"

namespace gemma::cli {
namespace {

int DataSynth(int argc, char** argv) {
  std::string kind = "ocr", level = "full", out, output = "table";
  int n = 100, image_size = 896, vocab_size = 1024;
  int64_t seed = 0;
  bool no_tokenizer = false, quiet = false;
  FlagSet flags(
      "gemmactl data synth",
      "Write a synthetic dataset (no download needed): receipt images drawn "
      "with OpenCV, their\n"
      "<s_key>value</s_key> targets as HF-style JSONL (train.jsonl) and CORD "
      "layout\n"
      "(metadata.jsonl), and a Gemma-style SentencePiece tokenizer.model "
      "trained on its text.\n"
      "Same seed, same dataset. The folder is written whole or not at all.");
  flags.String("kind", &kind, "dataset kind (only: ocr)");
  flags
      .String("level", &level,
              "full (receipts as printed) or easy (a 4 x 4 grid of large "
              "glyphs a tiny model learns to read)")
      .Meta("L");
  flags.String("out", &out, "output folder (must not exist, or be empty)")
      .Meta("DIR");
  flags.Int("n", &n, "number of examples").Meta("N");
  flags.Int("seed", &seed, "random seed").Meta("S");
  flags.Int("image-size", &image_size, "image side in pixels (square)")
      .Meta("N");
  flags
      .Int("vocab-size", &vocab_size, "tokenizer vocabulary size (upper bound)")
      .Meta("N");
  flags.Bool("no-tokenizer", &no_tokenizer, "do not train tokenizer.model");
  flags.Bool("quiet", &quiet, "no progress on stderr").Short('q');
  flags.String("output", &output, "table or json").Short('o');
  flags.Epilog(
      "Examples:\n"
      "  gemmactl data synth --kind ocr --out /data/ocr-synth --n 1000 --seed "
      "1\n"
      "  gemmactl data synth --out /tmp/tiny --n 8 --image-size 224 -o json\n"
      "  gemmactl data synth --kind ocr --level easy --out /tmp/ocr-easy "
      "--n 600 --image-size 64");
  flags.ErrorPrefix("gemmactl");
  if (auto exit_code = flags.ParseOrExit(argc, argv, 3)) return *exit_code;
  if (kind != "ocr")
    return flags.UsageError(
        absl::StrCat("--kind must be ocr, not '", kind, "'"));
  absl::StatusOr<SynthLevel> parsed_level = ParseSynthLevel(level);
  if (!parsed_level.ok()) {
    return flags.UsageError(
        absl::StrCat("--level must be easy or full, not '", level, "'"));
  }
  if (out.empty()) {
    return flags.UsageError(
        "--out DIR is required (see gemmactl data synth --help)");
  }
  if (auto exit_code = CheckOutputFlag(flags, output)) return *exit_code;
  SynthOcrOptions o;
  o.out_dir = out;
  o.num_examples = n;
  o.seed = static_cast<uint64_t>(seed);
  o.level = *parsed_level;
  o.image_size = image_size;
  o.vocab_size = vocab_size;
  o.train_tokenizer = !no_tokenizer;
  if (!quiet) {
    o.progress = [](int done, int total) {
      if (done == total || done % 50 == 0) {
        std::cerr << "\rrendered " << done << "/" << total
                  << (done == total ? "\n" : "") << std::flush;
      }
    };
  }
  const absl::Status s = WriteSyntheticOcrDataset(o);
  if (!s.ok()) {
    std::cerr << "gemmactl: data synth failed: " << s.message() << "\n";
    return 1;
  }
  if (output == "json") {
    nlohmann::json j = {
        {"out", out},
        {"kind", kind},
        {"level", level},
        {"examples", n},
        {"seed", seed},
        {"image_size", image_size},
        {"train_jsonl", out + "/train.jsonl"},
        {"metadata_jsonl", out + "/metadata.jsonl"},
        {"tokenizer", no_tokenizer ? "" : out + "/tokenizer.model"}};
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << "wrote " << n << " examples to " << out
              << " (train.jsonl, metadata.jsonl, images/"
              << (no_tokenizer ? "" : ", tokenizer.model") << ")\n";
  }
  return 0;
}

int Data(int argc, char** argv) {
  const char* usage =
      "Usage: gemmactl data SUBCOMMAND [flags]\n\n"
      "Offline data tools (no coordinator needed).\n\n"
      "Subcommands:\n"
      "  synth       Write a synthetic OCR dataset and tokenizer\n\n"
      "Example:\n"
      "  gemmactl data synth --kind ocr --out /tmp/ocr --n 100\n";
  if (argc < 3 || !std::strcmp(argv[2], "--help") ||
      !std::strcmp(argv[2], "-h")) {
    std::cout << usage;
    return argc < 3 ? 2 : 0;
  }
  if (!std::strcmp(argv[2], "synth")) return DataSynth(argc, argv);
  std::cerr << "gemmactl: unknown data subcommand '" << argv[2]
            << "' (see gemmactl data --help)\n";
  return 2;
}

}  // namespace

std::vector<Command> LocalDataCommands() {
  return {{"data", "Offline data tools (synth)", Data}};
}

}  // namespace gemma::cli
