// The `sft` job as a user runs it: synthetic OCR data from `gemmactl data
// synth --level easy`, a tiny random Gemma 3 VL model, the job submitted to a
// real coordinator with two real workers. The model must learn to read the
// receipts: held-out token accuracy from chance to >= 0.9 (the tags and keys
// alone give about 0.72; the values are only in the pixels), held-out exact
// match from an eval job, and no such accuracy when each receipt is shown
// with another one's image. The checkpoints must be in the catalog, and the
// trained model must be in spec.output.
#include <sys/stat.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jobs/train_test_util.h"
#include "tests/integration/cluster_fixture.h"

namespace gemma::testing {
namespace {

using ::testing::HasSubstr;

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

void WriteText(const std::string& path, const std::string& text) {
  FILE* f = fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr) << path;
  fwrite(text.data(), 1, text.size(), f);
  fclose(f);
}

// The last reported value of `metric` of job `name` (-1 if none).
double JobMetric(LocalCluster& cluster, const std::string& name,
                 const std::string& metric) {
  std::string out;
  if (cluster.Ctl({"get", name, "-o", "json"}, &out) != 0) return -1;
  const nlohmann::json j = nlohmann::json::parse(out, nullptr, false);
  if (j.is_discarded() || !j.contains("progress") ||
      !j["progress"].contains("metrics") ||
      !j["progress"]["metrics"].contains(metric)) {
    return -1;
  }
  return j["progress"]["metrics"][metric].get<double>();
}

TEST(TrainJobTest, SftLearnsSyntheticOcrThroughTheCluster) {
  const absl::Time start = absl::Now();
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator());
  // Two workers on a machine of few cores: one math thread each.
  cluster.StartWorker({}, {"OMP_NUM_THREADS=1"});
  cluster.StartWorker({}, {"OMP_NUM_THREADS=1"});
  const std::string data = cluster.dir() + "/ocr";
  std::string out;
  ASSERT_EQ(RunProgram({BinPath("gemmactl"), "data", "synth", "--kind", "ocr",
                        "--level", "easy", "--out", data, "--n", "500",
                        "--seed", "3", "--image-size", "64", "--quiet"},
                       &out, absl::Seconds(120)),
            0)
      << out;
  // The last 100 receipts are held out: other receipts (no two are the same)
  // behind the same prompt, so their values can only be read from the image.
  std::vector<std::string> lines =
      absl::StrSplit(ReadFile(data + "/train.jsonl"), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 500u);
  std::string train, held_out, swapped;
  std::set<std::string> train_targets;
  std::vector<nlohmann::json> held;
  for (size_t i = 0; i < lines.size(); ++i) {
    nlohmann::json c = nlohmann::json::parse(lines[i]);
    ASSERT_EQ(c["messages"][0]["content"][1]["text"], "Describe this image.");
    const std::string target = c["messages"][1]["content"][0]["text"];
    if (i < 400) {
      train_targets.insert(target);
      absl::StrAppend(&train, lines[i], "\n");
    } else {
      EXPECT_EQ(train_targets.count(target), 0u) << target;
      absl::StrAppend(&held_out, lines[i], "\n");
      held.push_back(std::move(c));
    }
  }
  // The control: each held-out receipt shown with the next one's image.
  for (size_t i = 0; i < held.size(); ++i) {
    nlohmann::json c = held[i];
    c["messages"][0]["content"][0]["path"] =
        held[(i + 1) % held.size()]["messages"][0]["content"][0]["path"];
    absl::StrAppend(&swapped, c.dump(), "\n");
  }
  WriteText(data + "/train-400.jsonl", train);
  WriteText(data + "/held-out.jsonl", held_out);
  WriteText(data + "/held-out-swapped.jsonl", swapped);

  // One 16-pixel patch per glyph of the 4 x 4 grid, one image token each.
  TinyVlOptions tiny;
  tiny.image_size = 64;
  tiny.patch_size = 16;
  tiny.mm_tokens = 16;
  const std::string model = cluster.dir() + "/tiny";
  auto made = WriteTinyVlModel(model, data + "/tokenizer.model", tiny);
  ASSERT_TRUE(made.ok()) << made;

  const std::string output = cluster.dir() + "/trained";
  const std::string recipe = cluster.WriteRecipe(
      "sft.yaml",
      absl::StrCat(
          "kind: sft\nresources: {device: cpu}\nparallel: {dp: 2}\n"
          "model: {path: ",
          model, "}\n", "data: {train: ", data,
          "/train-400.jsonl, eval: ", data,
          "/held-out.jsonl, batch_size: 4, seq_len: 512, seed: 1}\n"
          "optim: {lr: 0.001, max_steps: 800, warmup_steps: 20, grad_clip: "
          "1.0, min_lr_ratio: 0.1, weight_decay: 0.01, eval_interval_steps: "
          "400, eval_batches: 25, log_interval_steps: 50}\n"
          "checkpoint: {interval_steps: 400, root: ",
          cluster.dir(), "/ckpt}\n", "output: ", output, "\n"));
  // Training takes a while on a loaded 2-core machine: more than Ctl's 60 s.
  ASSERT_EQ(RunProgram({BinPath("gemmactl"), "submit", "-f", recipe, "--job-id",
                        "sft", "--follow", "--coordinator", cluster.address()},
                       &out, absl::Seconds(300)),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("SUCCEEDED"));
  const absl::Duration trained = absl::Now() - start;

  // The job's own held-out numbers (all 100 receipts: 25 batches of 4).
  const double accuracy = JobMetric(cluster, "jobs/sft", "eval_accuracy");
  const double loss = JobMetric(cluster, "jobs/sft", "eval_loss");

  // Generation on the held-out receipts, and the control.
  auto eval = [&](const std::string& name, const std::string& jsonl) {
    const std::string report = absl::StrCat(cluster.dir(), "/", name, ".json");
    const std::string r = cluster.WriteRecipe(
        name + ".yaml",
        absl::StrCat(
            "kind: eval\nresources: {device: cpu}\nmodel: {path: ", output,
            "}\ndata: {eval: ", data, "/", jsonl,
            ", batch_size: 10, seq_len: 512}\neval: {generate_examples: "
            "100, max_new_tokens: 48, report: ",
            report, "}\n"));
    std::string log;
    EXPECT_EQ(RunProgram({BinPath("gemmactl"), "submit", "-f", r, "--job-id",
                          name, "--follow", "--coordinator", cluster.address()},
                         &log, absl::Seconds(120)),
              0)
        << log;
    return nlohmann::json::parse(ReadFile(report), nullptr, false);
  };
  const nlohmann::json read = eval("eval-held-out", "held-out.jsonl");
  const nlohmann::json control = eval("eval-swapped", "held-out-swapped.jsonl");
  ASSERT_TRUE(read.is_object() && read.contains("generation")) << read;
  ASSERT_TRUE(control.is_object() && control.contains("generation")) << control;
  const nlohmann::json& gen = read["generation"];
  std::cout << "held-out: sft eval_accuracy " << accuracy << " eval_loss "
            << loss << "; eval job token accuracy " << read["token_accuracy"]
            << " exact match " << gen["exact_match"] << " field F1 "
            << gen["field_f1"] << " CER " << gen["cer"]
            << "; with swapped images: token accuracy "
            << control["token_accuracy"] << " exact match "
            << control["generation"]["exact_match"] << "\n"
            << "wall time: " << absl::FormatDuration(trained)
            << " to the trained model, "
            << absl::FormatDuration(absl::Now() - start) << " in all\n";

  // Chance is 1 / vocab (the untrained model measures about 0.005); the
  // receipts' tags and keys alone give about 0.72: the rest is reading.
  EXPECT_GE(accuracy, 0.9) << out;
  EXPECT_GT(loss, 0);
  EXPECT_LT(loss, 0.3) << out;  // from ~6.5 untrained
  EXPECT_GE(read["token_accuracy"].get<double>(), 0.9) << read;
  EXPECT_EQ(gen["examples"], 100) << read;
  // Whole receipts read right, every value of them, on receipts never seen.
  EXPECT_GE(gen["exact_match"].get<double>(), 0.5) << read;
  EXPECT_GE(gen["field_f1"].get<double>(), 0.9) << read;
  // What it writes comes from the pixels: another receipt's image, another
  // receipt's values.
  EXPECT_LT(control["token_accuracy"].get<double>(), 0.85) << control;
  EXPECT_LT(control["generation"]["exact_match"].get<double>(), 0.05)
      << control;

  ASSERT_EQ(cluster.Ctl({"ckpt", "list", "-o", "json"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr(cluster.dir() + "/ckpt/step-00000400"));
  EXPECT_THAT(out, HasSubstr(cluster.dir() + "/ckpt/step-00000800"));
  EXPECT_TRUE(Exists(output + "/manifest.json"));
  EXPECT_TRUE(Exists(output + "/tokenizer.model"));
  EXPECT_FALSE(Exists(output + ".staging"));
}

TEST(TrainJobTest, PeftJobWritesAdaptersThroughTheCluster) {
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator());
  cluster.StartWorker();
  const std::string data = cluster.dir() + "/ocr";
  std::string out;
  ASSERT_EQ(RunProgram({BinPath("gemmactl"), "data", "synth", "--kind", "ocr",
                        "--out", data, "--n", "16", "--image-size", "64"},
                       &out, absl::Seconds(120)),
            0)
      << out;
  const std::string model = cluster.dir() + "/tiny";
  TinyVlOptions tiny;
  ASSERT_TRUE(WriteTinyVlModel(model, data + "/tokenizer.model", tiny).ok());
  const std::string output = cluster.dir() + "/adapters";
  const std::string recipe = cluster.WriteRecipe(
      "peft.yaml",
      absl::StrCat("kind: peft\nresources: {device: cpu}\nmodel: {path: ",
                   model, "}\ndata: {train: ", data,
                   "/train.jsonl, batch_size: 2, seq_len: 512}\n"
                   "optim: {lr: 0.005, max_steps: 6}\n"
                   "peft: {rank: 4, alpha: 8, merge: true, export_dir: ",
                   cluster.dir(),
                   "/hf-adapter}\n"
                   "checkpoint: {interval_steps: 3, root: ",
                   cluster.dir(), "/ckpt}\noutput: ", output, "\n"));
  ASSERT_EQ(RunProgram({BinPath("gemmactl"), "submit", "-f", recipe, "--follow",
                        "--coordinator", cluster.address()},
                       &out, absl::Seconds(300)),
            0)
      << out;
  EXPECT_TRUE(Exists(output + "/adapter.json"));
  EXPECT_TRUE(Exists(output + "/merged/manifest.json"));
  EXPECT_TRUE(Exists(cluster.dir() + "/hf-adapter/adapter_config.json"));
  EXPECT_TRUE(Exists(cluster.dir() + "/ckpt/step-00000003/model/adapter.json"));
  ASSERT_EQ(cluster.Ctl({"ckpt", "list", "-o", "json"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr(cluster.dir() + "/ckpt/step-00000006"));
}

TEST(TrainJobTest, BadSpecIsRefusedAtSubmitNamingTheField) {
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator());
  const std::string recipe = cluster.WriteRecipe(
      "bad.yaml",
      "kind: sft\nresources: {device: cpu}\nmodel: {path: /m}\n"
      "data: {train: /d.jsonl}\noptim: {lr: 0.001, max_steps: 10, schedule: "
      "step}\n");
  std::string out;
  EXPECT_NE(cluster.Ctl({"submit", "-f", recipe}, &out), 0);
  EXPECT_THAT(out, HasSubstr("optim.schedule"));
}

}  // namespace
}  // namespace gemma::testing

namespace gemma::testing {
namespace {

// Gemma 4 (mixture of experts) through the cluster: a tiny MoE model on 4
// worker processes. The sft job runs at TP 2 x DP 2 with its experts split
// over EP 4 (folded over both TP groups); it learns (loss from about
// ln(vocab) to well below), reports the router's load, commits its
// checkpoints (a rank file per EP rank, the TP shards in the first two) and
// writes the model; an sft job and a peft job load that model at another
// layout (EP 2 x DP 2: tp 1, dp 4, ep 2), the first going on training, the
// second training LoRA adapters and exporting them for HF PEFT without V
// adapters on the K=V layers.
TEST(TrainJobTest, MoeSftAndPeftOverTensorExpertAndDataParallelWorkers) {
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator());
  for (int i = 0; i < 4; ++i) cluster.StartWorker({}, {"OMP_NUM_THREADS=1"});
  const std::string data = cluster.dir() + "/text";
  ASSERT_EQ(mkdir(data.c_str(), 0755), 0);
  std::string jsonl;
  const char* words[] = {"total", "cash", "change", "item", "price",
                         "tax",   "date", "store",  "card", "sum"};
  for (int i = 0; i < 64; ++i) {
    std::string q, a;
    for (int k = 0; k < 3 + i % 3; ++k) {
      const std::string w = words[(i * 7 + k * 3) % 10];
      q += (k ? " " : "") + w;
      a = w + (k ? " " : "") + a;
    }
    absl::StrAppend(&jsonl,
                    "{\"messages\": [{\"role\": \"user\", \"content\": "
                    "\"reverse: ",
                    q,
                    "\"}, {\"role\": \"assistant\", "
                    "\"content\": \"",
                    a, "\"}]}\n");
  }
  WriteText(data + "/train.jsonl", jsonl);
  ASSERT_TRUE(
      WriteTinyGemma4Tokenizer(data + "/tokenizer.model", data + "/train.jsonl")
          .ok());
  const std::string model = cluster.dir() + "/tiny-moe";
  TinyMoeOptions tiny;
  ASSERT_TRUE(WriteTinyMoeModel(model, data + "/tokenizer.model", tiny).ok());

  const std::string output = cluster.dir() + "/trained-moe";
  const std::string recipe = cluster.WriteRecipe(
      "moe-sft.yaml",
      absl::StrCat(
          "kind: sft\nresources: {device: cpu}\n"
          "parallel: {tp: 2, dp: 2, ep: 4}\nmodel: {path: ",
          model, ", recompute: true}\ndata: {train: ", data,
          "/train.jsonl, batch_size: 2, seq_len: 64, seed: 1}\n"
          "optim: {lr: 0.004, max_steps: 40, warmup_steps: 4, grad_clip: 1.0, "
          "global_batch_size: 8, log_interval_steps: 10}\n"
          "checkpoint: {interval_steps: 20, root: ",
          cluster.dir(), "/ckpt}\noutput: ", output, "\n"));
  std::string out;
  ASSERT_EQ(RunProgram({BinPath("gemmactl"), "submit", "-f", recipe, "--job-id",
                        "moe", "--follow", "--coordinator", cluster.address()},
                       &out, absl::Seconds(300)),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("SUCCEEDED"));
  const double loss = JobMetric(cluster, "jobs/moe", "loss");
  std::cout << "MoE sft: final loss " << loss << ", router max load "
            << JobMetric(cluster, "jobs/moe", "moe_max_load") << ", min load "
            << JobMetric(cluster, "jobs/moe", "moe_min_load") << "\n";
  // Uniform over the 512-piece vocabulary is ln 512 = 6.2.
  EXPECT_GT(loss, 0);
  EXPECT_LT(loss, 2.0) << out;
  EXPECT_GE(JobMetric(cluster, "jobs/moe", "moe_max_load"), 1.0);
  EXPECT_GE(JobMetric(cluster, "jobs/moe", "moe_min_load"), 0.0);
  ASSERT_EQ(cluster.Ctl({"ckpt", "list", "-o", "json"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr(cluster.dir() + "/ckpt/step-00000020"));
  EXPECT_THAT(out, HasSubstr(cluster.dir() + "/ckpt/step-00000040"));
  for (const std::string& dir :
       {cluster.dir() + "/ckpt/step-00000040/model", output}) {
    for (int r = 0; r < 4; ++r) {
      EXPECT_TRUE(Exists(absl::StrFormat("%s/rank-%05d.safetensors", dir, r)))
          << dir << " rank " << r;
    }
    EXPECT_FALSE(Exists(dir + "/rank-00004.safetensors")) << dir;
    const nlohmann::json m =
        nlohmann::json::parse(ReadFile(dir + "/manifest.json"), nullptr, false);
    ASSERT_TRUE(m.is_object() && m.contains("parallel")) << dir;
    EXPECT_EQ(m["parallel"].value("ep", 0), 4) << dir;
    EXPECT_EQ(m["parallel"].value("tp", 0), 2) << dir;
  }
  EXPECT_TRUE(Exists(output + "/tokenizer.model"));

  // SFT goes on from the trained model at EP 2 x DP 2 (tp 1, dp 4, ep 2: the
  // TP 2 / EP 4 output resharded on load) and keeps what it learned.
  const std::string again = cluster.WriteRecipe(
      "moe-sft-ep2.yaml",
      absl::StrCat(
          "kind: sft\nresources: {device: cpu}\n"
          "parallel: {dp: 4, ep: 2}\nmodel: {path: ",
          output, "}\ndata: {train: ", data,
          "/train.jsonl, batch_size: 2, seq_len: 64, seed: 2}\n"
          "optim: {lr: 0.002, max_steps: 10, warmup_steps: 2, grad_clip: 1.0, "
          "log_interval_steps: 5}\ncheckpoint: {interval_steps: 10, root: ",
          cluster.dir(), "/ckpt-ep2}\n"));
  ASSERT_EQ(RunProgram({BinPath("gemmactl"), "submit", "-f", again, "--job-id",
                        "moe-ep2", "--follow", "--coordinator",
                        cluster.address()},
                       &out, absl::Seconds(300)),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("SUCCEEDED"));
  EXPECT_LT(JobMetric(cluster, "jobs/moe-ep2", "loss"), 2.0) << out;
  EXPECT_TRUE(Exists(cluster.dir() +
                     "/ckpt-ep2/step-00000010/model/rank-00001.safetensors"));
  EXPECT_FALSE(Exists(cluster.dir() +
                      "/ckpt-ep2/step-00000010/model/rank-00002.safetensors"));

  // LoRA on the trained model at another layout (the TP 2 / EP 4 checkpoint
  // resharded on load); adapters exported for HF PEFT.
  const std::string adapters = cluster.dir() + "/moe-adapters";
  const std::string hf_adapter = cluster.dir() + "/moe-hf-adapter";
  const std::string peft = cluster.WriteRecipe(
      "moe-peft.yaml",
      absl::StrCat("kind: peft\nresources: {device: cpu}\n"
                   "parallel: {dp: 4, ep: 2}\nmodel: {path: ",
                   output, "}\ndata: {train: ", data,
                   "/train.jsonl, batch_size: 2, seq_len: 64}\n"
                   "optim: {lr: 0.005, max_steps: 4}\n"
                   "peft: {rank: 4, alpha: 8, merge: true, export_dir: ",
                   hf_adapter, "}\ncheckpoint: {root: ", cluster.dir(),
                   "/ckpt-peft}\noutput: ", adapters, "\n"));
  ASSERT_EQ(
      RunProgram({BinPath("gemmactl"), "submit", "-f", peft, "--job-id",
                  "moe-peft", "--follow", "--coordinator", cluster.address()},
                 &out, absl::Seconds(300)),
      0)
      << out;
  EXPECT_TRUE(Exists(adapters + "/adapter.json"));
  EXPECT_TRUE(Exists(adapters + "/merged/manifest.json"));
  EXPECT_TRUE(Exists(adapters + "/merged/rank-00001.safetensors"));
  const std::string config = ReadFile(hf_adapter + "/adapter_config.json");
  EXPECT_THAT(config, HasSubstr("\"r\": 4"));
  // The tiny model's layer 1 is a full K=V layer: q and k adapters, no v.
  const std::string weights =
      ReadFile(hf_adapter + "/adapter_model.safetensors");
  EXPECT_THAT(weights, HasSubstr("layers.1.self_attn.k_proj.lora_A"));
  EXPECT_THAT(weights, HasSubstr("layers.0.self_attn.v_proj.lora_A"));
  EXPECT_THAT(weights, ::testing::Not(HasSubstr("layers.1.self_attn.v_proj")));
}

}  // namespace
}  // namespace gemma::testing
