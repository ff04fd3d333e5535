// Speed of our Gemma 3 VL model at real shapes with random weights: a full
// SFT step (forward, fused chunked loss, backward, fused AdamW) and batch-1
// KV-cached greedy decoding. Prints one JSON object per measurement; the HF
// side (bench/hf_model_bench.py) prints the same fields for the same config,
// and bench/gpu/run.sh puts them side by side as ratios.
//
//   model_bench --preset 4b --mode sft --seq 4096 --images 1 --steps 10
//   model_bench --preset 4b --mode lora --lora-rank 32   (LoRA on qkv, o,
//                gate_up, down of every decoder layer; base frozen)
//   model_bench --preset 4b --mode decode --new-tokens 256 [--cuda-graphs both]
//                (a row per variant: growing cache eager / CUDA graphs;
//                --chained both adds a row with our kernels launched unchained)
//   model_bench --preset 4b --write-config DIR   (config.json for the HF side)
//   model_bench ... --profile DIR   (sft/lora: after the timed steps, one
//                more step under Kineto; kernels.csv, ops.csv, timeline.csv,
//                runtime.csv, trace.json; decode: 32 tokens of each
//                static-cache variant and setting, DIR/<setting>/<variant>)
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "bench/kineto_profile.h"
#include "common/flags.h"
#include "model/config.h"
#include "model/fused_ops.h"
#include "model/generate.h"
#include "model/layers.h"
#include "model/lora_adapter.h"
#include "model/loss.h"
#include "model/recompute.h"
#include "model/vl_model.h"
#include "nlohmann/json.hpp"

#ifdef GEMMA_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace gemma {
namespace {

// A 0 / 1 / both flag as the settings to run, off first; empty for anything
// else.
std::vector<bool> OffOnBoth(const std::string& v) {
  std::vector<bool> out;
  if (v == "0" || v == "both") out.push_back(false);
  if (v == "1" || v == "both") out.push_back(true);
  return out;
}

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Sync(const torch::Device& d) {
#ifdef GEMMA_WITH_CUDA
  if (d.is_cuda()) c10::cuda::device_synchronize();
#endif
  (void)d;
}

double PeakGiB(const torch::Device& d) {
#ifdef GEMMA_WITH_CUDA
  if (d.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(
        d.index() < 0 ? 0 : d.index());
    return static_cast<double>(
               stats
                   .allocated_bytes[static_cast<size_t>(
                       c10::CachingAllocator::StatType::AGGREGATE)]
                   .peak) /
           (1 << 30);
  }
#endif
  (void)d;
  return 0;
}

void ResetPeak(const torch::Device& d) {
#ifdef GEMMA_WITH_CUDA
  if (d.is_cuda())
    c10::cuda::CUDACachingAllocator::resetPeakStats(d.index() < 0 ? 0
                                                                  : d.index());
#endif
  (void)d;
}

// Model FLOPs of one forward over one sample (matmuls + attention scores),
// the usual MFU convention: training = 3x forward.
double ForwardFlops(const ModelConfig& c, int64_t seq, int64_t images) {
  const TextConfig& t = c.text;
  const double h = t.hidden_size, hd = t.head_dim, nq = t.num_heads,
               nkv = t.num_kv_heads, in = t.intermediate_size;
  const double per_layer = h * (nq + 2 * nkv) * hd + nq * hd * h + 3 * h * in;
  double flops = 2 * per_layer * t.num_layers * seq;
  flops += 2 * h * t.vocab_size * seq;  // LM head
  for (LayerType lt : t.layer_types) {
    double visible = lt == LayerType::kSliding && t.sliding_window < seq
                         ? t.sliding_window
                         : seq / 2.0;
    flops += 4 * seq * visible * nq * hd;
  }
  if (c.vision && images > 0) {
    const VisionConfig& v = *c.vision;
    const double np =
        (v.image_size / v.patch_size) * (v.image_size / v.patch_size);
    const double hv = v.hidden_size;
    const double vl = 4 * hv * hv + 2 * hv * v.intermediate_size;
    flops +=
        images * (2 * vl * v.num_layers * np + 4 * np * np * hv * v.num_layers +
                  2 * np * hv * 3 * v.patch_size * v.patch_size +
                  2 * c.mm_tokens_per_image * hv * h);
  }
  return flops;
}

// Input ids: bos, text, then per image boi + image tokens + eoi, then text.
ModelInputs MakeInputs(const ModelConfig& c, int64_t batch, int64_t seq,
                       int64_t images, const torch::Device& dev,
                       torch::ScalarType dtype) {
  std::vector<int64_t> row;
  row.push_back(c.text.bos_token_id);
  const int64_t img_len = images * (c.mm_tokens_per_image + 2);
  TORCH_CHECK(seq > img_len + 8, "--seq too short for the images");
  const int64_t text_before = 16;
  for (int64_t i = 0; i < text_before; ++i) row.push_back(1000 + i);
  for (int64_t k = 0; k < images; ++k) {
    row.push_back(c.boi_token_id);
    for (int64_t i = 0; i < c.mm_tokens_per_image; ++i)
      row.push_back(c.image_token_id);
    row.push_back(c.eoi_token_id);
  }
  while (static_cast<int64_t>(row.size()) < seq)
    row.push_back(3000 + static_cast<int64_t>(row.size()) % 20000);
  ModelInputs in;
  in.input_ids =
      torch::tensor(row, torch::kLong).unsqueeze(0).repeat({batch, 1}).to(dev);
  if (images > 0 && c.vision) {
    const int64_t s = c.vision->image_size;
    in.pixel_values = torch::rand({batch * images, 3, s, s}, torch::kFloat)
                          .mul_(2)
                          .sub_(1)
                          .to(dev, dtype);
    in.token_type_ids = in.input_ids.eq(c.image_token_id).to(torch::kLong);
  }
  return in;
}

int Run(int argc, char** argv) {
  FlagSet flags("model_bench",
                "Speed of our Gemma 3 model at real shapes (random weights).");
  std::string preset = "4b", mode = "sft", device = "cuda",
              dtype_name = "bfloat16", write_config;
  int64_t layers = 0, seq = 4096, batch = 1, images = 1, steps = 10, warmup = 3,
          new_tokens = 256, prompt = 512, chunk = 4096;
  int64_t lora_rank = 32;
  bool recompute = false;
  flags.String("preset", &preset, "4b, 12b or 27b");
  flags.Int("layers", &layers, "keep only this many decoder layers (0: all)");
  flags.String("mode", &mode, "sft, lora or decode");
  flags.Int("lora-rank", &lora_rank, "lora: adapter rank (alpha = rank)");
  flags.String("device", &device, "cuda or cpu");
  flags.String("dtype", &dtype_name, "bfloat16 or float32");
  flags.Int("seq", &seq, "tokens per sample (sft)");
  flags.Int("batch", &batch, "samples per step (sft)");
  flags.Int("images", &images, "images per sample");
  flags.Int("steps", &steps, "timed steps");
  flags.Int("warmup", &warmup, "untimed steps first");
  flags.Int("new-tokens", &new_tokens, "decode: tokens generated");
  flags.Int("prompt", &prompt, "decode: prompt tokens");
  flags.Int("loss-chunk", &chunk, "sft: loss rows per chunk");
  flags.String("write-config", &write_config,
               "write config.json here and exit");
  std::string cuda_graphs = "both";
  flags.String("cuda-graphs", &cuda_graphs,
               "decode: 0 (growing KV cache, eager), 1 (static cache replayed "
               "as CUDA graphs), both (a row each) or all (also the static "
               "cache eager)");
  flags.Bool("recompute", &recompute,
             "sft/lora: recompute each decoder layer in backward");
  std::string fused = "1";
  flags.String("fused", &fused,
               "fused CUDA kernels for the norms, rope, gelu*up and residual "
               "adds (model/fused_ops.h): 1, 0, or both (a row without them "
               "first, the baseline, then with them, in this process)");
  std::string chained = "1";
  flags.String("chained", &chained,
               "decode: chained kernel launches (model/cuda_launch.cuh; the "
               "layers' projections then take the GEMV kernel): 1, 0, or both "
               "(a row each, unchained first); with --fused 1 only");
  std::string profile_dir;
  flags.String("profile", &profile_dir,
               "profile with Kineto into this directory: sft/lora one extra "
               "step, decode 32 tokens of each static-cache variant under each "
               "setting (DIR/<chained|unchained|unfused>/<eager|graphs>)");
  if (auto exit_code = flags.ParseOrExit(argc, argv)) return *exit_code;

  const std::vector<bool> fused_settings = OffOnBoth(fused);
  const std::vector<bool> chained_settings = OffOnBoth(chained);
  if (fused_settings.empty() || chained_settings.empty()) {
    std::cerr << "--fused and --chained must be 0, 1 or both\n";
    return 2;
  }
  SetChainedLaunches(chained_settings.back());
  auto config = Gemma3Preset(preset);
  if (!config.ok()) {
    std::cerr << config.status() << "\n";
    return 2;
  }
  ModelConfig c = *config;
  if (layers > 0 && layers < c.text.num_layers) {
    c.text.num_layers = layers;
    c.text.layer_types.resize(layers);
  }
  if (!write_config.empty()) {
    std::ofstream f(write_config + "/config.json");
    f << ModelConfigToJson(c).dump(2);
    return f.good() ? 0 : 1;
  }
  const torch::Device dev(device);
  const torch::ScalarType dtype =
      dtype_name == "float32" ? torch::kFloat : torch::kBFloat16;
  torch::manual_seed(0);
  Gemma3Model model(c);
  for (auto& p : model->parameters()) {
    torch::NoGradGuard ng;
    if (p.dim() >= 2)
      p.normal_(0, 0.02);
    else
      p.zero_();
  }
  model->to(dev, dtype);
  nlohmann::json out;
  out["impl"] = "ours";
  out["preset"] = preset;
  out["layers"] = c.text.num_layers;
  out["mode"] = mode;
  out["device"] = device;
  out["dtype"] = dtype_name;
  out["attention"] =
      UseSdpa(torch::empty({1}, torch::TensorOptions().device(dev))) ? "sdpa"
                                                                     : "eager";
  int64_t nparams = 0;
  for (auto& p : model->parameters()) nparams += p.numel();
  out["params"] = nparams;

  if (mode == "lora") {
    // The reference recipes' adapters (r = alpha, no dropout) on the text
    // decoder's four projections; everything else frozen.
    for (auto& p : model->parameters()) p.set_requires_grad(false);
    for (const auto& item : model->text->named_modules()) {
      auto proj = std::dynamic_pointer_cast<ProjectionImpl>(item.value());
      if (!proj) continue;
      auto adapter = std::make_shared<LoraAdapter>(
          proj->in_features, proj->out_features, lora_rank,
          static_cast<double>(lora_rank), 0.0);
      adapter->to(dev, dtype);
      proj->SetAdapter(kLoraSlot, adapter);
    }
  }
  if (mode == "sft" || mode == "lora") {
    model->train();
    ModelInputs in = MakeInputs(c, batch, seq, images, dev, dtype);
    torch::Tensor labels = torch::where(
        in.input_ids.ge(c.image_token_id) | in.input_ids.eq(c.boi_token_id),
        torch::full_like(in.input_ids, -100), in.input_ids);
    std::vector<torch::Tensor> params, m, v, st;
    int64_t trainable = 0;
    for (auto& p : model->parameters()) {
      if (!p.requires_grad()) continue;
      trainable += p.numel();
      params.push_back(p);
      m.push_back(torch::zeros_like(p));
      v.push_back(torch::zeros_like(p));
      st.push_back(torch::zeros(
          {}, torch::TensorOptions().dtype(torch::kFloat).device(dev)));
    }
    LmLossOptions lo;
    lo.chunk_tokens = chunk;
    auto step = [&]() {
      RecomputeScope recompute_scope(recompute);
      torch::Tensor emb = model->Embeddings(in);
      DecoderInputs di;
      di.block_ids = in.token_type_ids.defined()
                         ? BlockIdsFromTokenTypes(in.token_type_ids)
                         : torch::Tensor();
      torch::Tensor hidden = model->text->Decode(emb, di);
      LmLoss loss = model->text->Loss(hidden, labels, lo);
      (loss.loss_sum / loss.tokens.clamp_min(1)).backward();
      // Parameters without a gradient (the vision tower without images) are
      // left out of the update, as torch.optim does.
      std::vector<torch::Tensor> P, G, M, V, S;
      for (size_t i = 0; i < params.size(); ++i) {
        if (!params[i].grad().defined()) continue;
        P.push_back(params[i]);
        G.push_back(params[i].grad());
        M.push_back(m[i]);
        V.push_back(v[i]);
        S.push_back(st[i]);
      }
      torch::NoGradGuard ng;
      for (auto& s : S) s.add_(1);
      at::_fused_adamw_(P, G, M, V, {}, S, 1e-5, 0.9, 0.95, 0.1, 1e-8, false,
                        false, std::nullopt, std::nullopt);
      for (auto& p : params) p.mutable_grad() = torch::Tensor();
    };
    double baseline_s = 0;
    for (const bool on : fused_settings) {
      SetFusedKernels(on);
      for (int64_t i = 0; i < warmup; ++i) step();
      Sync(dev);
      ResetPeak(dev);
      const double t0 = Now();
      for (int64_t i = 0; i < steps; ++i) step();
      Sync(dev);
      const double dt = (Now() - t0) / steps;
      const double tokens = static_cast<double>(batch * seq);
      // A full step is forward + backward (2x forward); LoRA's backward
      // skips the frozen weights' gradients (about 1x forward) and adds the
      // small adapter matmuls (left out).
      const double flops =
          (mode == "lora" ? 2 : 3) * ForwardFlops(c, seq, images) * batch;
      nlohmann::json row = out;
      row["fused_kernels"] = on;
      row["trainable_params"] = trainable;
      row["step_s"] = dt;
      row["tokens_per_s"] = tokens / dt;
      row["tflops"] = flops / dt / 1e12;
      row["peak_gib"] = PeakGiB(dev);
      row["seq"] = seq;
      row["batch"] = batch;
      row["images"] = images;
      row["recompute"] = recompute;
      if (!on) baseline_s = dt;
      if (on && baseline_s > 0) row["speedup_vs_unfused"] = baseline_s / dt;
      std::cout << row.dump() << std::endl;
    }
    if (!profile_dir.empty()) {
      KinetoProfile prof;
      step();
      Sync(dev);
      prof.Finish(profile_dir);
    }
    return 0;
  } else if (mode == "decode") {
    // One row per variant: the growing cache (eager), the static cache
    // (eager) and the static cache replayed as CUDA graphs.
    struct Variant {
      const char* name;
      bool graphs, static_cache;
    };
    std::vector<Variant> variants;
    if (cuda_graphs == "0" || cuda_graphs == "both" || cuda_graphs == "all")
      variants.push_back({"dynamic", false, false});
    if (cuda_graphs == "all") variants.push_back({"static", false, true});
    if (cuda_graphs == "1" || cuda_graphs == "both" || cuda_graphs == "all")
      variants.push_back({"graphs", true, true});
    if (variants.empty()) {
      std::cerr << "--cuda-graphs must be 0, 1, both or all\n";
      return 2;
    }
    model->eval();
    torch::NoGradGuard ng;
    ModelInputs in = MakeInputs(c, 1, prompt, images, dev, dtype);
    int64_t weight_bytes = 0;
    for (auto& p : model->text->parameters())
      weight_bytes += p.numel() * p.element_size();
    // Per-token time from two runs that share the prefill and the one-off
    // setup (static cache, graph capture): (t(n + 1) - t(k + 1)) / (n - k).
    const int64_t k = std::min<int64_t>(16, new_tokens / 4);
    std::map<std::string, torch::Tensor> last_tokens;
    std::map<std::string, double> unfused_rate;
    // Greedy to the last token (no stop tokens), no per-step logits kept.
    auto decode_options = [](bool graphs, bool static_cache) {
      GenerateOptions go;
      go.stop_token_ids = {};
      go.return_step_logits = false;
      go.cuda_graphs = graphs;
      go.static_cache = static_cache;
      return go;
    };
    // (fused, chained) settings: chaining applies to the fused kernels.
    std::vector<std::pair<bool, bool>> settings;
    for (const bool on : fused_settings) {
      if (!on) {
        settings.push_back({false, false});
        continue;
      }
      for (const bool ch : chained_settings) settings.push_back({true, ch});
    }
    std::map<std::string, double> unchained_rate;
    for (const auto& [on, ch] : settings) {
      SetFusedKernels(on);
      SetChainedLaunches(ch);
      for (const Variant& var : variants) {
        GenerateOptions go = decode_options(var.graphs, var.static_cache);
        auto timed = [&](int64_t n) {
          go.max_new_tokens = n;
          Sync(dev);
          const double t0 = Now();
          auto r = Generate(model, in, go);
          TORCH_CHECK(r.ok(), r.status().ToString());
          Sync(dev);
          TORCH_CHECK(r->tokens.size(1) == n, "generated ", r->tokens.size(1));
          last_tokens[var.name] = r->tokens;
          return Now() - t0;
        };
        for (int64_t i = 0; i < warmup; ++i) timed(8);
        ResetPeak(dev);
        double t1 = 1e30, tk = 1e30, tn = 1e30;
        for (int64_t i = 0; i < std::max<int64_t>(1, steps / 5); ++i) {
          t1 = std::min(t1, timed(1));
          if (k > 0) tk = std::min(tk, timed(k + 1));
          tn = std::min(tn, timed(new_tokens + 1));
        }
        if (k == 0) tk = t1;
        const double per_token = (tn - tk) / (new_tokens - k);
        nlohmann::json row = out;
        row["variant"] = var.name;
        row["cuda_graphs"] = var.graphs;
        row["kv_cache"] = var.static_cache ? "static" : "dynamic";
        row["prefill_s"] = t1;
        // What a call spends besides prefill and its steps (graph capture).
        row["setup_s"] = std::max(0.0, tk - t1 - k * per_token);
        row["decode_tokens_per_s"] = 1.0 / per_token;
        row["fused_kernels"] = on;
        row["chained_launches"] = ch;
        if (!on) unfused_rate[var.name] = 1.0 / per_token;
        if (on && unfused_rate.count(var.name))
          row["speedup_vs_unfused"] = 1.0 / per_token / unfused_rate[var.name];
        if (on && !ch) unchained_rate[var.name] = 1.0 / per_token;
        if (on && ch && unchained_rate.count(var.name)) {
          row["speedup_vs_unchained"] =
              1.0 / per_token / unchained_rate[var.name];
        }
        row["weight_bytes"] = weight_bytes;
        row["peak_gib"] = PeakGiB(dev);
        row["prompt"] = prompt;
        row["new_tokens"] = new_tokens;
        if (var.graphs && last_tokens.count("static")) {
          // The graph replays the static eager step's kernels: same tokens.
          row["tokens_match_static_eager"] =
              torch::equal(last_tokens["static"], last_tokens["graphs"]);
        }
        std::cout << row.dump() << std::endl;
      }
      if (!profile_dir.empty()) {
        // 32 tokens of each static-cache variant under these settings, into
        // DIR/<setting>/<eager|graphs>; times per token (prefill included).
        const std::string setting =
            !on ? "unfused" : (ch ? "chained" : "unchained");
        for (const Variant& var : variants) {
          if (!var.static_cache) continue;
          GenerateOptions go =
              decode_options(var.graphs, /*static_cache=*/true);
          go.max_new_tokens = 32;
          TORCH_CHECK(Generate(model, in, go).ok(), "decode warm-up failed");
          Sync(dev);
          const std::string dir = profile_dir + "/" + setting +
                                  (var.graphs ? "/graphs" : "/eager");
          std::filesystem::create_directories(dir);
          std::cout << "== profile: " << setting << " " << var.name
                    << " decode (per token)\n";
          KinetoProfile prof;
          TORCH_CHECK(Generate(model, in, go).ok(), "decode failed");
          Sync(dev);
          prof.Finish(dir, /*steps=*/32);
        }
      }
    }
    return 0;
  } else {
    std::cerr << "--mode must be sft, lora or decode\n";
    return 2;
  }
  std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace
}  // namespace gemma

int main(int argc, char** argv) {
  try {
    return gemma::Run(argc, argv);
  } catch (const c10::Error& e) {
    std::cerr << "model_bench: " << e.what_without_backtrace() << "\n";
    return 1;
  }
}
