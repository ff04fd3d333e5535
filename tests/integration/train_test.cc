// The `sft` job as a user runs it: synthetic OCR data from `gemmactl data
// synth`, a tiny random Gemma 3 VL model, the job submitted to a real
// coordinator with two real workers. The held-out token accuracy the job
// reports at its end must rise from chance to what the task's text
// structure allows, the checkpoints must be in the catalog, and the trained
// model must be in spec.output.
#include <sys/stat.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
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

// The last reported value of `metric` for the job in `list -o json` output.
double JobMetric(const nlohmann::json& jobs, const std::string& metric) {
  const nlohmann::json& list = jobs.is_array() ? jobs : jobs["jobs"];
  for (const auto& j : list) {
    if (j.contains("progress") && j["progress"].contains("metrics") &&
        j["progress"]["metrics"].contains(metric)) {
      return j["progress"]["metrics"][metric].get<double>();
    }
  }
  return -1;
}

TEST(TrainJobTest, SftLearnsSyntheticOcrThroughTheCluster) {
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator());
  cluster.StartWorker();
  cluster.StartWorker();
  const std::string data = cluster.dir() + "/ocr";
  std::string out;
  ASSERT_EQ(RunProgram(
                {BinPath("gemmactl"), "data", "synth", "--kind", "ocr", "--out",
                 data, "--n", "240", "--seed", "3", "--image-size", "64"},
                &out, absl::Seconds(120)),
            0)
      << out;
  // The last 40 receipts are held out.
  std::vector<std::string> lines =
      absl::StrSplit(ReadFile(data + "/train.jsonl"), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 240u);
  std::string train, held_out;
  for (size_t i = 0; i < lines.size(); ++i)
    absl::StrAppend(i < 200 ? &train : &held_out, lines[i], "\n");
  WriteText(data + "/train-200.jsonl", train);
  WriteText(data + "/held-out.jsonl", held_out);

  TinyVlOptions tiny;
  tiny.image_size = 64;
  tiny.mm_tokens = 16;
  const std::string model = cluster.dir() + "/tiny";
  auto made = WriteTinyVlModel(model, data + "/tokenizer.model", tiny);
  ASSERT_TRUE(made.ok()) << made;

  const std::string output = cluster.dir() + "/trained";
  const std::string recipe = cluster.WriteRecipe(
      "sft.yaml",
      absl::StrCat(
          "kind: sft\nresources: {device: cpu}\n"
          "model: {path: ",
          model, "}\n", "data: {train: ", data,
          "/train-200.jsonl, eval: ", data,
          "/held-out.jsonl, batch_size: 8, seq_len: 512, seed: 1}\n"
          "optim: {lr: 0.003, max_steps: 100, warmup_steps: 10, grad_clip: 1.0,"
          " min_lr_ratio: 0.1, weight_decay: 0.01, eval_interval_steps: 50,"
          " eval_batches: 5, log_interval_steps: 10}\n"
          "checkpoint: {interval_steps: 50, root: ",
          cluster.dir(), "/ckpt}\n", "output: ", output, "\n"));
  // Training takes a while on a loaded 2-core machine: more than Ctl's 60 s.
  ASSERT_EQ(RunProgram({BinPath("gemmactl"), "submit", "-f", recipe, "--follow",
                        "--coordinator", cluster.address()},
                       &out, absl::Seconds(300)),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("SUCCEEDED"));

  ASSERT_EQ(cluster.Ctl({"list", "-o", "json"}, &out), 0) << out;
  const nlohmann::json jobs = nlohmann::json::parse(out, nullptr, false);
  ASSERT_FALSE(jobs.is_discarded()) << out;
  const double accuracy = JobMetric(jobs, "eval_accuracy");
  const double loss = JobMetric(jobs, "eval_loss");
  // Chance is 1 / vocab (about 0.002; the untrained model measures 0.005).
  // The receipts' tags, keys and formats are predictable from the text
  // alone; the values are only in the pixels, which a model this small does
  // not learn to read in 100 CPU steps (it plateaus near 0.67).
  std::cout << "held-out eval_accuracy " << accuracy << " eval_loss " << loss
            << "\n";
  EXPECT_GE(accuracy, 0.6) << out;
  EXPECT_GT(loss, 0);
  EXPECT_LT(loss, 1.5) << out;  // from ~6.5 untrained

  ASSERT_EQ(cluster.Ctl({"ckpt", "list", "-o", "json"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr(cluster.dir() + "/ckpt/step-00000050"));
  EXPECT_THAT(out, HasSubstr(cluster.dir() + "/ckpt/step-00000100"));
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
