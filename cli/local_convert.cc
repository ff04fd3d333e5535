#include "cli/local_convert.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/checkpoint.h"
#include "model/convert.h"
#include "nlohmann/json.hpp"

namespace gemma::cli {
namespace {

std::string Human(double bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (bytes >= 1000 && u < 4) {
    bytes /= 1000;
    ++u;
  }
  return absl::StrFormat(u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
}

// "4GB", "500MB", "123" (bytes) -> bytes.
bool ParseSize(const std::string& text, uint64_t* out) {
  std::string num = text;
  uint64_t mult = 1;
  const std::pair<const char*, uint64_t> suffixes[] = {{"GiB", 1ull << 30},
                                                       {"MiB", 1ull << 20},
                                                       {"KiB", 1ull << 10},
                                                       {"GB", 1000000000ull},
                                                       {"MB", 1000000ull},
                                                       {"KB", 1000ull},
                                                       {"B", 1}};
  for (const auto& [s, m] : suffixes) {
    const size_t n = std::strlen(s);
    if (num.size() > n && num.compare(num.size() - n, n, s) == 0) {
      num.resize(num.size() - n);
      mult = m;
      break;
    }
  }
  double v;
  if (!absl::SimpleAtod(num, &v) || v <= 0) return false;
  *out = static_cast<uint64_t>(v * static_cast<double>(mult));
  return true;
}

// A progress bar on stderr, redrawn at most 10 times a second.
class ProgressBar {
 public:
  void Update(uint64_t done, uint64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const double frac =
        total == 0 ? 1.0
                   : static_cast<double>(done) / static_cast<double>(total);
    const double secs = std::chrono::duration<double>(now - start_).count();
    const int width = 30, filled = static_cast<int>(frac * width);
    std::fprintf(
        stderr, "\r[%s%s] %3d%% %s / %s  %s/s ",
        std::string(filled, '#').c_str(),
        std::string(width - filled, ' ').c_str(), static_cast<int>(frac * 100),
        Human(static_cast<double>(done)).c_str(),
        Human(static_cast<double>(total)).c_str(),
        Human(secs > 0 ? static_cast<double>(done) / secs : 0).c_str());
    drawn_ = true;
  }
  void Finish() {
    if (drawn_) std::fputc('\n', stderr);
  }

 private:
  std::chrono::steady_clock::time_point start_ =
      std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_{};
  bool drawn_ = false;
};

}  // namespace

int LocalConvert(int argc, char** argv) {
  std::string from, to, to_format, output = "table", max_shard = "4GB";
  int tp = 1;
  int ep = 1;
  bool overwrite = false, no_verify = false, quiet = false;
  FlagSet flags(
      "gemmactl local convert",
      "Convert between Hugging Face Gemma 3 / Gemma 4 folders and our sharded "
      "checkpoints.\n"
      "HF folders: config.json with model.safetensors or a sharded index "
      "(bf16, fp16\n"
      "or fp32, older and newer key layouts). Checkpoints: manifest.json +\n"
      "rank-NNNNN.safetensors. Conversions are bit-exact.");
  flags.String("from", &from, "source folder (HF model or our checkpoint)")
      .Meta("DIR");
  flags.String("to", &to, "output folder (must not exist unless --overwrite)")
      .Meta("DIR");
  flags.Int(
      "tp", &tp,
      "tensor-parallel size of a written checkpoint (divides the KV heads)");
  flags.Int("ep", &ep,
            "expert-parallel size of a written Gemma 4 checkpoint (divides "
            "num_experts)");
  flags
      .String(
          "to-format", &to_format,
          "ours or hf (default: hf when --from is our checkpoint, else ours)")
      .Meta("FORMAT");
  flags
      .String("max-shard-size", &max_shard,
              "HF export: largest file (e.g. 4GB, 500MB)")
      .Meta("SIZE");
  flags.Bool("overwrite", &overwrite, "replace --to if it exists");
  flags.Bool("no-verify", &no_verify,
             "skip checksum verification when reading our checkpoints");
  flags.Bool("quiet", &quiet, "no progress bar");
  AddOutputFlag(flags, &output);
  flags.Epilog(
      "Examples:\n"
      "  gemmactl local convert --from ~/models/gemma-3-4b-it --to "
      "/ckpt/gemma3-4b-tp2 --tp 2\n"
      "  gemmactl local convert --from /ckpt/gemma3-4b-tp2 --to "
      "/tmp/gemma3-4b-hf\n"
      "  gemmactl local convert --from /ckpt/gemma3-4b-tp2 --to "
      "/ckpt/gemma3-4b-tp1 \\\n"
      "      --to-format ours --tp 1 -o json\n");
  flags.ErrorSuffix(" (see --help)");
  if (auto exit_code = flags.ParseOrExit(argc, argv, 3)) return *exit_code;
  if (from.empty() || to.empty())
    return flags.UsageError("--from and --to are required");
  if (output != "table" && output != "json")
    return flags.UsageError("--output must be table or json");
  if (tp < 1) return flags.UsageError("--tp must be >= 1");
  if (ep < 1) return flags.UsageError("--ep must be >= 1");
  const bool from_ours = PathExists(from + "/manifest.json");
  if (to_format.empty()) to_format = from_ours ? "hf" : "ours";
  if (to_format != "ours" && to_format != "hf")
    return flags.UsageError("--to-format must be ours or hf");
  if (!from_ours && to_format == "hf")
    return flags.UsageError(
        "--from is not our checkpoint; HF -> HF is not a conversion");
  ConvertOptions opt;
  opt.tp = tp;
  opt.ep = ep;
  opt.overwrite = overwrite;
  opt.verify_checksums = !no_verify;
  if (!ParseSize(max_shard, &opt.max_shard_bytes))
    return flags.UsageError("bad --max-shard-size '" + max_shard + "'");
  ProgressBar bar;
  if (!quiet)
    opt.progress = [&bar](uint64_t done, uint64_t total) {
      bar.Update(done, total);
    };

  absl::StatusOr<ConvertStats> stats;
  if (!from_ours) {
    stats = ConvertHfToCheckpoint(from, to, opt);
  } else if (to_format == "hf") {
    stats = ConvertCheckpointToHf(from, to, opt);
  } else {
    stats = ReshardCheckpoint(from, to, opt);
  }
  bar.Finish();
  if (!stats.ok()) {
    std::cerr << "gemmactl local convert: " << stats.status().message() << "\n";
    return 1;
  }
  const double rate = stats->seconds > 0
                          ? static_cast<double>(stats->bytes) / stats->seconds
                          : 0;
  if (output == "json") {
    nlohmann::json j = {{"from", from},
                        {"to", to},
                        {"to_format", to_format},
                        {"tp", to_format == "ours" ? tp : 0},
                        {"ep", to_format == "ours" ? ep : 0},
                        {"bytes", stats->bytes},
                        {"tensors", stats->tensors},
                        {"files", stats->files},
                        {"seconds", stats->seconds},
                        {"bytes_per_second", rate}};
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << absl::StrFormat(
        "converted %d tensors into %d files at %s: %s in %.2f s (%s/s)\n",
        stats->tensors, stats->files, to,
        Human(static_cast<double>(stats->bytes)), stats->seconds, Human(rate));
  }
  return 0;
}

}  // namespace gemma::cli
