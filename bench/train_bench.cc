// SFT training speed on the CPU: our trainer's step (jobs/trainer.h) against
// transformers training the same tiny Gemma 3 VL model (same config and
// weights, same batches, same CPU, same run). Prints a table and the ratio.
//
//   train_bench [--steps N] [--warmup N] [--hidden H] [--layers L]
//               [--batch B] [--keep]
#include <torch/torch.h>
#include <unistd.h>

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
#include "jobs/train_state.h"
#include "jobs/train_test_util.h"
#include "jobs/trainer.h"
#include "model/checkpoint.h"
#include "model/convert.h"

namespace gemma {
namespace {

int Run(int argc, char** argv) {
  int steps = 10, warmup = 2, hidden = 256, layers = 4, batch = 8;
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
    else {
      std::cout
          << "train_bench: our SFT step vs transformers on a tiny Gemma 3 VL\n"
             "  --steps N (10) --warmup N (2) --hidden H (256) --layers L (4)\n"
             "  --batch B (8) --keep (leave the temp folder)\n";
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
  check(ConvertCheckpointToHf(dir + "/model", dir + "/hf", {}).status(),
        "to hf");

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
  for (auto& p : (*trainer)->model()->parameters()) params += p.numel();
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
