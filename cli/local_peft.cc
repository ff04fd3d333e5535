#include "cli/local_peft.h"

#include <torch/torch.h>

#include <chrono>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/cli.h"
#include "common/flags.h"
#include "common/status_macros.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/lora.h"
#include "model/safetensors_torch.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace gemma::cli {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Whole CPU tensors in memory as a checkpoint source.
class TensorSource : public GlobalTensorSource {
 public:
  TensorSource(std::string config_json,
               std::map<std::string, at::Tensor> tensors)
      : config_(std::move(config_json)), tensors_(std::move(tensors)) {}
  absl::Status Init() {
    for (auto& [name, t] : tensors_) {
      GEMMA_ASSIGN_OR_RETURN(DType dt, FromScalarType(t.scalar_type()));
      entries_.push_back({name, dt, t.sizes().vec()});
    }
    return absl::OkStatus();
  }
  const std::vector<Entry>& entries() const override { return entries_; }
  const std::string& config_json() const override { return config_; }
  absl::StatusOr<VirtualTensor> Global(const std::string& name) override {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) return absl::NotFoundError(name);
    return VirtualTensor::Contiguous(
        static_cast<const uint8_t*>(it->second.data_ptr()),
        it->second.sizes().vec(), it->second.element_size());
  }

 private:
  std::string config_;
  std::map<std::string, at::Tensor> tensors_;
  std::vector<Entry> entries_;
};

struct Loaded {
  ModelWeights weights;
  Gemma3Model model{nullptr};
  AdapterCheckpointInfo info;
  std::string base;
};

// Loads the base model and the adapter checkpoint on top of it.
absl::StatusOr<Loaded> LoadWithAdapters(const std::string& adapter,
                                        std::string base, bool quiet) {
  Loaded out;
  GEMMA_ASSIGN_OR_RETURN(AdapterCheckpointInfo info,
                         ReadAdapterCheckpointInfo(adapter));
  if (base.empty()) base = info.base_model;
  if (base.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        adapter, "/adapter.json: base_model is empty; pass --base"));
  }
  const auto t0 = Clock::now();
  if (!quiet) std::cerr << "loading base model " << base << " ...\n";
  GEMMA_ASSIGN_OR_RETURN(out.weights, LoadModelWeights(base));
  GEMMA_ASSIGN_OR_RETURN(
      ModelConfig config,
      ParseModelConfigText(out.weights.config_json, base + "/config.json"));
  GEMMA_ASSIGN_OR_RETURN(out.model,
                         BuildGemma3Model(config, out.weights.tensors));
  out.model->eval();
  if (!quiet) {
    std::cerr << absl::StrFormat("loaded %d tensors in %.2f s; adapters %s\n",
                                 out.weights.tensors.size(), Since(t0),
                                 adapter);
  }
  GEMMA_ASSIGN_OR_RETURN(out.info, LoadAdapterCheckpoint(adapter, out.model));
  out.base = base;
  return out;
}

// The flags both commands take: the adapter checkpoint and its base, where to
// write, progress and the output format.
struct AdapterFlags {
  std::string adapter, out, base, output = "table";
  bool quiet = false;

  // --adapter, --out (described by `out_help`) and --base.
  void AddSources(FlagSet& flags, const std::string& out_help) {
    flags
        .String("adapter", &adapter,
                "adapter checkpoint folder (peft job output)")
        .Meta("DIR");
    flags.String("out", &out, out_help).Meta("DIR");
    flags
        .String("base", &base,
                "base model folder (default: the one recorded in the adapter "
                "checkpoint)")
        .Meta("DIR");
  }
  // --quiet and -o/--output.
  void AddOutput(FlagSet& flags) {
    flags.Bool("quiet", &quiet, "no progress messages");
    AddOutputFlag(flags, &output);
  }
  // Parses argv[3..] and checks these flags; nullopt to go on, else the exit
  // code (0 after --help, 2 for bad usage).
  std::optional<int> ParseOrExit(FlagSet& flags, int argc, char** argv) const {
    flags.ErrorSuffix(" (see --help)");
    if (auto exit_code = flags.ParseOrExit(argc, argv, 3)) return exit_code;
    if (adapter.empty() || out.empty()) {
      return flags.UsageError("--adapter and --out are required");
    }
    if (output != "table" && output != "json") {
      return flags.UsageError("--output must be table or json");
    }
    return std::nullopt;
  }
};

int Fail(const std::string& cmd, const absl::Status& st) {
  std::cerr << "gemmactl local " << cmd << ": " << st.message() << "\n";
  return 1;
}

}  // namespace

int LocalPeftMerge(int argc, char** argv) {
  AdapterFlags args;
  int tp = 1;
  bool overwrite = false;
  FlagSet flags("gemmactl local peft-merge",
                "Fold a LoRA/DoRA adapter checkpoint into its base model and "
                "write a full\nsharded checkpoint (the base's stored dtype).");
  args.AddSources(flags, "output checkpoint folder");
  flags.Int("tp", &tp, "tensor-parallel size of the written checkpoint");
  flags.Bool("overwrite", &overwrite, "replace --out if it exists");
  args.AddOutput(flags);
  flags.Epilog(
      "Example:\n"
      "  gemmactl local peft-merge --adapter /ckpt/run1/adapter --out "
      "/ckpt/run1-merged\n");
  if (auto exit_code = args.ParseOrExit(flags, argc, argv)) return *exit_code;
  if (tp < 1) return flags.UsageError("--tp must be >= 1");
  const std::string cmd = "peft-merge";
  const auto t0 = Clock::now();
  auto loaded = LoadWithAdapters(args.adapter, args.base, args.quiet);
  if (!loaded.ok()) return Fail(cmd, loaded.status());
  Gemma3Model& model = loaded->model;
  const size_t n_adapters = AdapterParameters(model).size();
  if (absl::Status m = MergeAdapters(model); !m.ok()) return Fail(cmd, m);
  std::map<std::string, at::Tensor> tensors;
  try {
    torch::NoGradGuard no_grad;
    for (const auto& item : model->named_parameters()) {
      auto it = loaded->weights.tensors.find(item.key());
      const auto dtype = it == loaded->weights.tensors.end()
                             ? item.value().scalar_type()
                             : it->second.scalar_type();
      tensors[item.key()] =
          item.value().detach().to(torch::kCPU, dtype).contiguous();
    }
  } catch (const c10::Error& e) {
    return Fail(cmd, absl::InternalError(e.what_without_backtrace()));
  }
  TensorSource source(loaded->weights.config_json, std::move(tensors));
  if (absl::Status s = source.Init(); !s.ok()) return Fail(cmd, s);
  WriteCheckpointOptions opt;
  opt.tp = tp;
  opt.dims.num_kv_heads = model->config().text.num_kv_heads;
  opt.overwrite = overwrite;
  opt.step = loaded->info.step;
  if (!args.quiet) std::cerr << "writing " << args.out << " ...\n";
  if (absl::Status w = WriteCheckpoint(args.out, source, opt); !w.ok()) {
    return Fail(cmd, w);
  }
  const double secs = Since(t0);
  if (args.output == "json") {
    nlohmann::json j = {{"adapter", args.adapter},
                        {"base", loaded->base},
                        {"out", args.out},
                        {"tp", tp},
                        {"method", loaded->info.spec.method()},
                        {"adapter_tensors", n_adapters},
                        {"tensors", source.entries().size()},
                        {"seconds", secs}};
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << absl::StrFormat(
        "merged %d %s adapter tensors into %s: %d tensors, tp %d, %.2f s\n",
        n_adapters, loaded->info.spec.method(), args.out,
        source.entries().size(), tp, secs);
  }
  return 0;
}

int LocalPeftExport(int argc, char** argv) {
  AdapterFlags args;
  std::string base_name;
  FlagSet flags(
      "gemmactl local peft-export",
      "Write a Hugging Face PEFT adapter folder (adapter_config.json, "
      "adapter_model.safetensors)\nfrom an adapter checkpoint; "
      "peft.PeftModel.from_pretrained loads it on the HF\nexport of "
      "the base model (gemmactl local convert --to-format hf).");
  args.AddSources(flags, "output folder (replaced if it exists)");
  flags
      .String("base-name", &base_name,
              "base_model_name_or_path written to adapter_config.json "
              "(default: the base folder)")
      .Meta("NAME");
  args.AddOutput(flags);
  flags.Epilog(
      "Example:\n"
      "  gemmactl local peft-export --adapter /ckpt/run1/adapter --out "
      "/tmp/run1-peft \\\n"
      "      --base-name google/gemma-3-4b-it\n");
  if (auto exit_code = args.ParseOrExit(flags, argc, argv)) return *exit_code;
  const std::string cmd = "peft-export";
  const auto t0 = Clock::now();
  auto loaded = LoadWithAdapters(args.adapter, args.base, args.quiet);
  if (!loaded.ok()) return Fail(cmd, loaded.status());
  if (base_name.empty()) base_name = loaded->base;
  if (absl::Status e = ExportPeftAdapter(loaded->model, loaded->info.spec,
                                         args.out, base_name);
      !e.ok()) {
    return Fail(cmd, e);
  }
  const double secs = Since(t0);
  if (args.output == "json") {
    nlohmann::json j = {{"adapter", args.adapter},
                        {"base", loaded->base},
                        {"out", args.out},
                        {"method", loaded->info.spec.method()},
                        {"rank", loaded->info.spec.rank()},
                        {"base_model_name_or_path", base_name},
                        {"seconds", secs}};
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << absl::StrFormat("exported %s adapter (r %d) to %s in %.2f s\n",
                                 loaded->info.spec.method(),
                                 loaded->info.spec.rank(), args.out, secs);
  }
  return 0;
}

}  // namespace gemma::cli
