// SFT training speed on the CPU: our trainer's step (jobs/trainer.h) against
// transformers training the same tiny Gemma 3 VL model (same config and
// weights, same batches, same CPU, same run). Prints a table and the ratio.
//
//   train_bench [--steps N] [--warmup N] [--hidden H] [--layers L]
//               [--batch B] [--keep]
//
// With --dp N: data parallelism instead, N Gloo ranks (threads of this
// process over loopback TCP, jobs/grad_sync.h + jobs/dist_optimizer.h):
// step time with the bucket reductions overlapped with backward vs after
// it, and zero_stage 1 vs 0, runs alternated --repeats times (medians);
// and the optimizer state each rank holds with zero_stage 0 vs 1.
//
//   train_bench --dp 2 [--bucket-kb 1024] [--repeats 3] [--batch B] ...
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "data/batch.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "jobs/dist_optimizer.h"
#include "jobs/grad_sync.h"
#include "jobs/train_state.h"
#include "jobs/train_test_util.h"
#include "jobs/trainer.h"
#include "model/checkpoint.h"
#include "model/convert.h"
#include "worker/comm.h"

namespace gemma {
namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct DpBenchOptions {
  int dp = 2;
  int64_t bucket_bytes = 1 << 20;
  int repeats = 3;
  int steps = 10;
  int warmup = 2;
};

// The --dp part: see the top of the file.
int RunDp(gemma::v1::JobSpec spec, const std::string& dir,
          const DpBenchOptions& o) {
  const int dp = o.dp;
  spec.mutable_parallel()->set_dp(dp);
  spec.mutable_data()->set_batch_size(
      std::max(1, spec.data().batch_size() / dp));
  spec.mutable_optim()->set_max_steps(o.warmup + o.steps);
  setenv("GEMMA_GRAD_BUCKET_BYTES", std::to_string(o.bucket_bytes).c_str(), 1);
  int run_id = 0;
  // Seconds per timed step (the slower rank) of one run.
  auto time_run = [&](bool overlap, int zero_stage) -> double {
    setenv("GEMMA_GRAD_OVERLAP", overlap ? "1" : "0", 1);
    auto s = spec;
    s.mutable_parallel()->set_zero_stage(zero_stage);
    std::vector<double> secs(dp, 0);
    const std::string root = absl::StrCat(dir, "/dp-ckpt-", run_id++);
    absl::Status st = RunGlooRanks(dp, [&](int rank, ParallelGroups& g) {
      TrainerOptions to;
      to.spec = s;
      to.groups = g;
      to.checkpoint_root = root;
      auto t = Trainer::Create(to);
      if (!t.ok()) return t.status();
      for (int i = 0; i < o.warmup + o.steps; ++i) {
        auto r = (*t)->Step();
        if (!r.ok()) return r.status();
        if (i >= o.warmup) secs[rank] += r->seconds;
      }
      return absl::OkStatus();
    });
    if (!st.ok()) {
      std::cerr << "dp run: " << st << "\n";
      std::exit(1);
    }
    return *std::max_element(secs.begin(), secs.end()) / o.steps;
  };
  std::vector<double> on, off, zero0;
  for (int r = 0; r < o.repeats; ++r) {
    on.push_back(time_run(true, 1));
    off.push_back(time_run(false, 1));
    zero0.push_back(time_run(true, 0));
  }
  unsetenv("GEMMA_GRAD_OVERLAP");

  // Optimizer state per rank for the trainer's parameters, both stages.
  std::vector<int64_t> state0(dp), state1(dp);
  int64_t params = 0, buckets = 0;
  absl::Status st = RunGlooRanks(dp, [&](int rank, ParallelGroups& g) {
    TrainerOptions to;
    to.spec = spec;
    to.groups = g;
    to.checkpoint_root = absl::StrCat(dir, "/dp-ckpt-mem");
    auto t = Trainer::Create(to);
    if (!t.ok()) return t.status();
    std::vector<TrainParam> a, b;
    for (const auto& [name, p] : (*t)->trainable()) {
      a.push_back({name, p.detach().clone().set_requires_grad(true)});
      b.push_back({name, p.detach().clone().set_requires_grad(true)});
      if (rank == 0) params += p.numel();
    }
    GradSync sync0(a, g, {o.bucket_bytes, true, false});
    GradSync sync1(b, g, {o.bucket_bytes, true, true});
    state0[rank] = DistOptimizer(sync0, {{}, 0}).StateBytes();
    state1[rank] = DistOptimizer(sync1, {{}, 1}).StateBytes();
    if (rank == 0) buckets = sync1.layout().buckets().size();
    return absl::OkStatus();
  });
  if (!st.ok()) {
    std::cerr << "dp memory: " << st << "\n";
    return 1;
  }
  std::cout << absl::StrFormat(
      "DP=%d on Gloo (ranks = threads over loopback TCP), tiny Gemma 3 VL "
      "%.2f M trainable params, micro batch %d per rank, %d buckets of <= "
      "%d KiB, %d timed steps (+%d warmup) x %d alternated runs, torch "
      "threads %d\n",
      dp, params / 1e6, spec.data().batch_size(), buckets, o.bucket_bytes >> 10,
      o.steps, o.warmup, o.repeats, at::get_num_threads());
  std::cout << absl::StrFormat("%-34s %10s\n", "", "s/step");
  std::cout << absl::StrFormat("%-34s %10.4f\n", "zero_stage 1, overlapped",
                               Median(on));
  std::cout << absl::StrFormat(
      "%-34s %10.4f\n", "zero_stage 1, reduced after backward", Median(off));
  std::cout << absl::StrFormat("%-34s %10.4f\n", "zero_stage 0, overlapped",
                               Median(zero0));
  std::cout << absl::StrFormat(
      "ratio step time overlapped / after backward: %.3f\n",
      Median(on) / Median(off));
  std::cout << absl::StrFormat(
      "ratio step time zero_stage 1 / zero_stage 0: %.3f\n",
      Median(on) / Median(zero0));
  for (int r = 0; r < dp; ++r) {
    std::cout << absl::StrFormat(
        "rank %d optimizer state: zero_stage 0 %.2f MB, zero_stage 1 %.2f MB, "
        "ratio 1/0: %.3f\n",
        r, state0[r] / 1e6, state1[r] / 1e6,
        static_cast<double>(state1[r]) / state0[r]);
  }
  return 0;
}

int Run(int argc, char** argv) {
  int steps = 10, warmup = 2, hidden = 256, layers = 4, batch = 8;
  int dp = 0, bucket_kb = 1024, repeats = 3;
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (a == "--steps")
      steps = next();
    else if (a == "--warmup")
      warmup = next();
    else if (a == "--hidden")
      hidden = next();
    else if (a == "--layers")
      layers = next();
    else if (a == "--batch")
      batch = next();
    else if (a == "--keep")
      keep = true;
    else if (a == "--dp")
      dp = next();
    else if (a == "--bucket-kb")
      bucket_kb = next();
    else if (a == "--repeats")
      repeats = next();
    else {
      std::cout
          << "train_bench: our SFT step vs transformers on a tiny Gemma 3 VL\n"
             "  --steps N (10) --warmup N (2) --hidden H (256) --layers L (4)\n"
             "  --batch B (8) --keep (leave the temp folder)\n"
             "  --dp N (0: off): N Gloo ranks, overlap and ZeRO-1 instead\n"
             "  --bucket-kb K (1024) --repeats R (3): for --dp\n";
      return a == "--help" ? 0 : 2;
    }
  }
  std::string tmpl = "/tmp/gemma_train_bench_XXXXXX";
  const std::string dir = mkdtemp(tmpl.data());
  auto check = [&](const absl::Status& s, const char* what) {
    if (!s.ok()) {
      std::cerr << what << ": " << s << "\n";
      std::exit(1);
    }
  };
  std::cerr << "making data and model under " << dir << "\n";
  check(WriteTinyOcrData(dir + "/data", 64, 1, 64), "data");
  TinyVlOptions tiny;
  tiny.hidden = hidden;
  tiny.intermediate = 4 * hidden;
  tiny.layers = layers;
  tiny.heads = 4;
  tiny.kv_heads = 2;
  tiny.head_dim = hidden / 4;
  tiny.vision_hidden = 64;
  tiny.image_size = 64;
  tiny.mm_tokens = 16;
  check(WriteTinyVlModel(dir + "/model", dir + "/data/tokenizer.model", tiny),
        "model");

  gemma::v1::JobSpec spec;
  spec.mutable_model()->set_path(dir + "/model");
  spec.mutable_data()->set_train(dir + "/data/train.jsonl");
  spec.mutable_data()->set_batch_size(batch);
  spec.mutable_data()->set_seq_len(1024);
  spec.mutable_data()->set_seed(1);
  spec.mutable_optim()->set_lr(1e-3);
  spec.mutable_optim()->set_schedule("constant");
  spec.mutable_optim()->set_grad_clip(1.0);
  spec.mutable_optim()->set_max_steps(warmup + steps);
  if (dp > 0) {
    DpBenchOptions o;
    o.dp = dp;
    o.bucket_bytes = static_cast<int64_t>(bucket_kb) << 10;
    o.repeats = std::max(1, repeats);
    o.steps = steps;
    o.warmup = warmup;
    const int rc = RunDp(spec, dir, o);
    if (!keep) (void)RemoveTree(dir);
    return rc;
  }
  check(ConvertCheckpointToHf(dir + "/model", dir + "/hf", {}).status(),
        "to hf");
  TrainerOptions to;
  to.spec = spec;
  to.checkpoint_root = dir + "/ckpt";
  auto trainer = Trainer::Create(to);
  check(trainer.status(), "trainer");

  // The same batches, from a loader with the trainer's options, for HF.
  {
    auto tok = Tokenizer::Load(dir + "/data/tokenizer.model");
    check(tok.status(), "tokenizer");
    auto convs = ReadDataset(dir + "/data/train.jsonl");
    check(convs.status(), "dataset");
    BatchOptions bo;
    bo.batch_size = batch;
    bo.seq_len = 1024;
    bo.seed = 1;
    bo.chat.mm_tokens_per_image = tiny.mm_tokens;
    bo.image.image_size = tiny.image_size;
    auto loader = DataLoader::Create(std::move(*convs), tok->get(), bo);
    check(loader.status(), "loader");
    std::map<std::string, at::Tensor> out;
    for (int i = 0; i < warmup + steps; ++i) {
      auto b = (*loader)->Next();
      check(b.status(), "batch");
      const std::string p = absl::StrCat("b", i, "/");
      out[p + "input_ids"] = b->input_ids;
      out[p + "labels"] = b->labels;
      out[p + "attention_mask"] = b->attention_mask;
      out[p + "token_type_ids"] = b->token_type_ids;
      if (b->pixel_values.defined() && b->pixel_values.numel() > 0)
        out[p + "pixel_values"] = b->pixel_values;
    }
    check(WriteTensorFile(dir + "/batches.safetensors", out), "batches");
  }

  double ours_seconds = 0, first_loss = 0;
  int64_t ours_tokens = 0;
  for (int i = 0; i < warmup + steps; ++i) {
    auto s = (*trainer)->Step();
    check(s.status(), "step");
    if (i == 0) first_loss = s->loss;
    if (i >= warmup) {
      ours_seconds += s->seconds;
      ours_tokens += s->input_tokens;
    }
  }
  const double ours = ours_tokens / ours_seconds;

  const std::string cmd = absl::StrCat(
      GEMMA_PYTHON, " ", GEMMA_SOURCE_DIR, "/bench/hf_train_bench.py ", dir,
      "/hf ", dir, "/batches.safetensors ", warmup, " ", steps);
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string text;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), pipe)) text.append(buf, n);
  if (pclose(pipe) != 0) {
    std::cerr << cmd << " failed:\n" << text << "\n";
    return 1;
  }
  const std::string last = text.substr(text.rfind('{'));
  const nlohmann::json hf = nlohmann::json::parse(last);
  const double theirs = hf["tokens_per_s"].get<double>();
  int64_t params = 0;
  for (auto& p : (*trainer)->module().parameters()) params += p.numel();
  std::cout << absl::StrFormat(
      "tiny Gemma 3 VL: %.2f M params, hidden %d, %d layers, batch %d, %d "
      "timed "
      "steps (+%d warmup), torch threads %d\n",
      params / 1e6, hidden, layers, batch, steps, warmup,
      at::get_num_threads());
  std::cout << absl::StrFormat("%-14s %12s %12s %12s\n", "", "tokens/s",
                               "s/step", "first loss");
  std::cout << absl::StrFormat("%-14s %12.0f %12.3f %12.6f\n", "ours", ours,
                               ours_seconds / steps, first_loss);
  std::cout << absl::StrFormat("%-14s %12.0f %12.3f %12.6f\n", "transformers",
                               theirs, hf["seconds"].get<double>() / steps,
                               hf["first_loss"].get<double>());
  std::cout << absl::StrFormat("ratio ours / transformers: %.2fx\n",
                               ours / theirs);
  if (!keep) (void)RemoveTree(dir);
  return 0;
}

}  // namespace
}  // namespace gemma

int main(int argc, char** argv) { return gemma::Run(argc, argv); }
