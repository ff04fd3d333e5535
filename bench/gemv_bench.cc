// The few-row GEMV kernel (model/gemv.h) against at::linear (cuBLAS) at the
// projection shapes of Gemma 3 batch-1 decode: qkv, o, gate_up, down of every
// layer and the lm_head. Each shape is timed as a CUDA graph of one call per
// layer, every layer with its own weight (the 50 MB L2 then holds none of them
// between uses, as in decode), best of --reps replays; then the whole step's
// GEMVs in layer order. Ours runs launched the usual way and chained
// (model/cuda_launch.cuh: each call streams its weights while the one before
// finishes). Prints per shape the weights timed (ws), microseconds per call
// and % of --bandwidth for each, chained/cuBLAS (time ratio: below 1 is
// faster), the configuration GemvAutoConfig chose, and the
// largest difference between the two outputs relative to cuBLAS's largest
// value (both round once to bf16, so about 1e-2 at most).
//
// Run on the GPU machine, after deploy/gpu/build-and-test.sh built it:
//   /tmp/gemma-gpu-build/bin/gemv_bench [--preset 4b|12b|27b|all] [--rows 1]
//       [--dtype bf16|fp16] [--bandwidth 3.35e12] [--reps 20] [--layers N]
//       [--sweep] [-o text|json]
// --sweep adds, per shape, every compiled configuration x k_split 1, 2, 4,
// chained (the automatic choice is starred): what GemvAutoConfig is tuned
// from. -o json prints one JSON object per row. Needs about 55 GB of GPU
// memory for 27b.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "common/flags.h"
#include "model/config.h"
#include "model/cuda_graph.h"
#include "model/fused_ops.h"
#include "model/gemv.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using fused_cuda::GemvConfig;

struct Shape {
  std::string name;
  int64_t n, k, copies;  // W [n, k], one per layer (lm_head: one)
};

std::vector<Shape> DecodeShapes(const TextConfig& t, int64_t layers) {
  const int64_t hd = t.head_dim;
  return {
      {"qkv", (t.num_heads + 2 * t.num_kv_heads) * hd, t.hidden_size, layers},
      {"o", t.hidden_size, t.num_heads * hd, layers},
      {"gate_up", 2 * t.intermediate_size, t.hidden_size, layers},
      {"down", t.hidden_size, t.intermediate_size, layers},
      {"lm_head", t.vocab_size, t.hidden_size, 1}};
}

// Seconds per replay of `body` captured as a CUDA graph (best of `reps`),
// our kernels launched chained or not (model/cuda_launch.cuh; restored to
// chained after).
double GraphSeconds(const std::function<void()>& body, int64_t reps,
                    bool chained) {
  SetChainedLaunches(chained);
  CudaGraph graph;
  auto once = [&] {
    body();
    return torch::Tensor();
  };
  TORCH_CHECK(graph.Capture(torch::Device(torch::kCUDA, 0), body, once),
              "gemv_bench: CUDA graph capture failed");
  graph.Replay();
  c10::cuda::device_synchronize();
  at::cuda::CUDAEvent start(cudaEventDefault), end(cudaEventDefault);
  double best = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < reps; ++i) {
    start.record();
    graph.Replay();
    end.record();
    end.synchronize();
    best = std::min(best, static_cast<double>(start.elapsed_time(end)) / 1e3);
  }
  SetChainedLaunches(true);
  return best;
}

std::string ConfigName(const GemvConfig& c) {
  return "rw" + std::to_string(c.rows_per_warp) + " u" +
         std::to_string(c.unroll) + " p" + std::to_string(c.stages) + " s" +
         std::to_string(c.k_split);
}

struct Options {
  std::string preset = "all", dtype = "bf16", output = "text";
  int64_t rows = 1, reps = 20, layers = 0;
  double bandwidth = 3.35e12;
  bool sweep = false;
};

class Bench {
 public:
  explicit Bench(const Options& o) : o_(o) {
    dtype_ = o.dtype == "fp16" ? torch::kHalf : torch::kBFloat16;
  }

  void Preset(const std::string& preset) {
    auto config = Gemma3Preset(preset);
    TORCH_CHECK(config.ok(), config.status().ToString());
    const TextConfig& t = config->text;
    const int64_t layers = o_.layers > 0 ? o_.layers : t.num_layers;
    const auto opts = torch::TensorOptions(torch::kCUDA).dtype(dtype_);
    torch::NoGradGuard no_grad;
    torch::manual_seed(0);
    std::map<std::string, std::vector<torch::Tensor>> w;
    std::map<std::string, torch::Tensor> x;
    double step_bytes = 0;
    for (const Shape& s : DecodeShapes(t, layers)) {
      for (int64_t i = 0; i < s.copies; ++i)
        w[s.name].push_back(torch::randn({s.n, s.k}, opts) * 0.02);
      x[s.name] = torch::randn({o_.rows, s.k}, opts);
      const auto& ws = w[s.name];
      const torch::Tensor& xs = x[s.name];
      const double bytes = static_cast<double>(s.copies) *
                           (s.n * s.k + o_.rows * (s.k + s.n)) * 2;
      // ours: our kernel, chained (model/cuda_launch.cuh) or not.
      auto run = [&](const GemvConfig& c, bool ours, bool chained = true) {
        return GraphSeconds(
            [&] {
              for (const auto& wi : ws) {
                if (ours) {
                  fused_cuda::Gemv(xs, wi, {}, c);
                } else {
                  at::linear(xs, wi);
                }
              }
            },
            o_.reps, chained);
      };
      const double t_cublas = run({}, false) / s.copies;
      const double t_ours = run({}, true, false) / s.copies;
      const double t_chained = run({}, true) / s.copies;
      const torch::Tensor ref = at::linear(xs, ws[0]).to(torch::kFloat);
      const double diff =
          ((fused_cuda::Gemv(xs, ws[0], {}).to(torch::kFloat) - ref)
               .abs()
               .max() /
           ref.abs().max())
              .item<double>();
      const GemvConfig automatic =
          fused_cuda::GemvAutoConfig(o_.rows, s.n, s.k);
      Row(preset, s, layers, bytes / s.copies, t_cublas, t_ours, t_chained,
          ConfigName(automatic), diff);
      step_bytes += bytes;
      if (o_.sweep) Sweep(preset, s, bytes / s.copies, automatic, run);
    }
    // The whole step's GEMVs in decode order (layer by layer, then the
    // head): cuBLAS, ours unchained, ours chained, and ours chained with the
    // gelu*up in gate_up's epilogue (decode's MLP; its output is I wide).
    enum Kind { kCublas, kOurs, kChained, kChainedGelu };
    auto step = [&](Kind kind) {
      return GraphSeconds(
          [&] {
            auto call = [&](const std::string& name, int64_t i) {
              if (kind == kCublas) {
                at::linear(x[name], w[name][i]);
              } else if (kind == kChainedGelu && name == "gate_up") {
                fused_cuda::GemvGeluMul(x[name], w[name][i]);
              } else {
                fused_cuda::Gemv(x[name], w[name][i], {});
              }
            };
            for (int64_t i = 0; i < layers; ++i) {
              for (const char* name : {"qkv", "o", "gate_up", "down"})
                call(name, i);
            }
            call("lm_head", 0);
          },
          o_.reps, kind == kChained || kind == kChainedGelu);
    };
    // Named, so that they run in this order.
    const double t_cublas = step(kCublas), t_ours = step(kOurs);
    const double t_chained = step(kChained), t_gelu = step(kChainedGelu);
    StepRow(preset, layers, step_bytes, t_cublas, t_ours, t_chained, t_gelu);
  }

 private:
  void Sweep(const std::string& preset, const Shape& s, double bytes,
             const GemvConfig& automatic,
             const std::function<double(const GemvConfig&, bool, bool)>& run) {
    for (GemvConfig c : fused_cuda::GemvCompiledConfigs()) {
      for (int split : {1, 2, 4}) {
        c.k_split = split;
        const double t = run(c, true, true) / s.copies;
        const bool is_auto = c.rows_per_warp == automatic.rows_per_warp &&
                             c.unroll == automatic.unroll &&
                             c.stages == automatic.stages &&
                             c.k_split == automatic.k_split;
        if (o_.output == "json") {
          nlohmann::json j = Common(preset, s);
          j["sweep_config"] = ConfigName(c);
          j["automatic"] = is_auto;
          j["ours_us"] = 1e6 * t;
          j["ours_pct_of_bandwidth"] = 100 * bytes / t / o_.bandwidth;
          std::cout << j.dump() << "\n";
        } else {
          std::printf("    %-16s %9.1f us %6.0f GB/s %5.1f%%%s\n",
                      ConfigName(c).c_str(), 1e6 * t, bytes / t / 1e9,
                      100 * bytes / t / o_.bandwidth, is_auto ? "  *" : "");
        }
      }
    }
  }

  nlohmann::json Common(const std::string& preset, const Shape& s) const {
    nlohmann::json j;
    j["preset"] = preset;
    j["shape"] = s.name;
    j["n"] = s.n;
    j["k"] = s.k;
    j["rows"] = o_.rows;
    j["dtype"] = o_.dtype;
    return j;
  }

  void Row(const std::string& preset, const Shape& s, int64_t layers,
           double bytes, double t_cublas, double t_ours, double t_chained,
           const std::string& config, double diff) {
    const double bw = o_.bandwidth;
    if (o_.output == "json") {
      nlohmann::json j = Common(preset, s);
      j["copies"] = s.copies;
      j["cublas_us"] = 1e6 * t_cublas;
      j["cublas_gb_per_s"] = bytes / t_cublas / 1e9;
      j["cublas_pct_of_bandwidth"] = 100 * bytes / t_cublas / bw;
      j["ours_us"] = 1e6 * t_ours;
      j["ours_gb_per_s"] = bytes / t_ours / 1e9;
      j["ours_pct_of_bandwidth"] = 100 * bytes / t_ours / bw;
      j["ours_over_cublas"] = t_ours / t_cublas;
      j["chained_us"] = 1e6 * t_chained;
      j["chained_pct_of_bandwidth"] = 100 * bytes / t_chained / bw;
      j["chained_over_cublas"] = t_chained / t_cublas;
      j["config"] = config;
      j["max_rel_diff"] = diff;
      j["device"] = Device();
      std::cout << j.dump() << "\n";
      return;
    }
    if (!header_printed_) {
      std::printf(
          "%s, %s, %lld row(s), %.2f TB/s peak; graphs of one call per "
          "layer, a weight per layer\n",
          Device().c_str(), o_.dtype.c_str(), static_cast<long long>(o_.rows),
          bw / 1e12);
      std::printf(
          "%-5s %-8s %14s %4s | %9s %5s | %7s %5s | %7s %5s | %6s %-14s "
          "%s\n",
          "model", "shape", "N x K", "ws", "cuBLAS us", "%bw", "ours us",
          "%bw", "chained", "%bw", "ratio", "config", "diff");
      header_printed_ = true;
    }
    const std::string nk = std::to_string(s.n) + " x " + std::to_string(s.k);
    std::printf(
        "%-5s %-8s %14s %4lld | %9.1f %5.1f | %7.1f %5.1f | %7.1f %5.1f "
        "| %6.3f %-14s %.1e\n",
        preset.c_str(), s.name.c_str(), nk.c_str(),
        static_cast<long long>(s.copies == 1 ? 1 : layers), 1e6 * t_cublas,
        100 * bytes / t_cublas / bw, 1e6 * t_ours, 100 * bytes / t_ours / bw,
        1e6 * t_chained, 100 * bytes / t_chained / bw, t_chained / t_cublas,
        config.c_str(), diff);
  }

  void StepRow(const std::string& preset, int64_t layers, double bytes,
               double t_cublas, double t_ours, double t_chained,
               double t_gelu) {
    const double bound = bytes / o_.bandwidth;
    if (o_.output == "json") {
      nlohmann::json j;
      j["preset"] = preset;
      j["shape"] = "step";
      j["layers"] = layers;
      j["rows"] = o_.rows;
      j["dtype"] = o_.dtype;
      j["bytes"] = bytes;
      j["bound_ms"] = 1e3 * bound;
      j["cublas_ms"] = 1e3 * t_cublas;
      j["ours_ms"] = 1e3 * t_ours;
      j["chained_ms"] = 1e3 * t_chained;
      j["chained_gelu_ms"] = 1e3 * t_gelu;
      j["cublas_pct_of_bound"] = 100 * bound / t_cublas;
      j["ours_pct_of_bound"] = 100 * bound / t_ours;
      j["chained_pct_of_bound"] = 100 * bound / t_chained;
      j["chained_gelu_pct_of_bound"] = 100 * bound / t_gelu;
      j["chained_over_cublas"] = t_chained / t_cublas;
      j["device"] = Device();
      std::cout << j.dump() << "\n";
      return;
    }
    std::printf(
        "%-5s step: %lld layers of GEMVs + lm_head in order (bound %.3f ms):\n"
        "      cuBLAS %.3f ms (%.1f%%), ours %.3f ms (%.1f%%), ours chained "
        "%.3f ms (%.1f%%), chained with the gelu epilogue %.3f ms (%.1f%%); "
        "chained / cuBLAS %.3f\n",
        preset.c_str(), static_cast<long long>(layers), 1e3 * bound,
        1e3 * t_cublas, 100 * bound / t_cublas, 1e3 * t_ours,
        100 * bound / t_ours, 1e3 * t_chained, 100 * bound / t_chained,
        1e3 * t_gelu, 100 * bound / t_gelu, t_chained / t_cublas);
  }

  static std::string Device() {
    cudaDeviceProp p{};
    cudaGetDeviceProperties(&p, 0);
    return p.name;
  }

  Options o_;
  c10::ScalarType dtype_;
  bool header_printed_ = false;
};

int Run(int argc, char** argv) {
  FlagSet flags("gemv_bench",
                "Few-row GEMV kernel vs cuBLAS at Gemma 3 decode shapes.");
  Options o;
  flags.String("preset", &o.preset, "4b, 12b, 27b or all");
  flags.Int("rows", &o.rows, "rows of x (1-4; decode batch)");
  flags.String("dtype", &o.dtype, "bf16 or fp16");
  flags.Double("bandwidth", &o.bandwidth, "HBM bytes/s for %bw (H100 SXM)");
  flags.Int("reps", &o.reps, "graph replays timed (best of)");
  flags.Int("layers", &o.layers, "weights per layer shape (0: the preset's)");
  flags.Bool("sweep", &o.sweep,
             "also time every compiled configuration x k_split 1, 2, 4");
  flags.String("output", &o.output, "text or json").Short('o');
  flags.Epilog(
      "Example: gemv_bench --preset 4b --sweep\n"
      "See the header of bench/gemv_bench.cc.\n");
  if (auto exit_code = flags.ParseOrExit(argc, argv)) return *exit_code;
  if (o.rows < 1 || o.rows > fused_cuda::kGemvMaxRows ||
      (o.dtype != "bf16" && o.dtype != "fp16") ||
      (o.output != "text" && o.output != "json") || o.reps < 1) {
    return flags.UsageError(
        "--rows 1-4, --dtype bf16|fp16, -o text|json, --reps >= 1");
  }
  std::vector<std::string> presets = {o.preset};
  if (o.preset == "all") presets = {"4b", "12b", "27b"};
  for (const std::string& p : presets) {
    if (!Gemma3Preset(p).ok())
      return flags.UsageError("--preset must be 4b, 12b, 27b or all");
  }
  if (!torch::cuda::is_available()) {
    std::cerr << "gemv_bench needs a CUDA device\n";
    return 1;
  }
  try {
    Bench bench(o);
    for (const std::string& p : presets) bench.Preset(p);
  } catch (const c10::Error& e) {
    std::cerr << "gemv_bench: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace gemma

int main(int argc, char** argv) { return gemma::Run(argc, argv); }
