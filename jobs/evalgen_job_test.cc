// The eval and generate jobs run in-process on a tiny random Gemma 3 VL model
// that transformers saved, against what transformers computes on the same
// files (jobs/evalgen_reference.py, the evalgen_fixture test).
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "data/metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jobs/eval.h"
#include "jobs/generate_job.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

std::string Fixture(const std::string& name) {
  return std::string(GEMMA_EVALGEN_FIXTURE) + "/" + name;
}

std::string TempDir() {
  std::string t = "/tmp/gemma_evalgen_XXXXXX";
  return mkdtemp(t.data());
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json Reference() { return json::parse(ReadAll(Fixture("reference.json"))); }

struct Ran {
  absl::Status status;
  std::map<std::string, double> final_metrics;
  int64_t progress_calls = 0;
  std::vector<std::string> logs;
};

Ran RunJob(Job& job, const gemma::v1::JobSpec& spec) {
  Ran ran;
  RankContext ctx;
  ctx.spec = spec;
  ctx.job = "jobs/test";
  ctx.device = "cpu";
  ctx.progress = [&](int64_t step, int64_t total,
                     const std::map<std::string, double>& m) {
    ++ran.progress_calls;
    if (step == total) ran.final_metrics = m;
  };
  ctx.log = [&](const std::string& line) { ran.logs.push_back(line); };
  ctx.cancelled = [] { return false; };
  ran.status = job.Run(ctx);
  return ran;
}

gemma::v1::JobSpec EvalSpec(const std::string& report) {
  gemma::v1::JobSpec spec;
  spec.set_kind(gemma::v1::JOB_KIND_EVAL);
  spec.mutable_model()->set_path(Fixture("model"));
  spec.mutable_data()->set_eval(Fixture("eval.jsonl"));
  spec.mutable_data()->set_batch_size(2);  // 5 conversations: 2 + 2 + 1
  spec.mutable_eval()->set_report(report);
  return spec;
}

gemma::v1::JobSpec GenerateSpec(const std::string& out, int batch) {
  gemma::v1::JobSpec spec;
  spec.set_kind(gemma::v1::JOB_KIND_GENERATE);
  spec.mutable_model()->set_path(Fixture("model"));
  auto* g = spec.mutable_generate();
  g->set_input(Fixture("prompts.jsonl"));
  g->set_output(out);
  g->set_batch_size(batch);
  g->set_max_new_tokens(Reference()["generate_max_new_tokens"].get<int>());
  return spec;
}

std::vector<json> ReadJsonl(const std::string& path) {
  std::vector<json> rows;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    json j = json::parse(line, nullptr, false);
    EXPECT_FALSE(j.is_discarded())
        << "bad JSONL line in " << path << ": " << line;
    rows.push_back(j);
  }
  return rows;
}

TEST(EvalJobTest, LossAndAccuracyEqualTransformers) {
  const std::string dir = TempDir();
  auto job = NewEvalJob();
  Ran ran = RunJob(*job, EvalSpec(dir + "/report.json"));
  ASSERT_TRUE(ran.status.ok()) << ran.status;
  const json ref = Reference()["eval"];
  const json rep = json::parse(ReadAll(dir + "/report.json"));
  EXPECT_EQ(rep["tokens"].get<int64_t>(), ref["tokens"].get<int64_t>());
  EXPECT_EQ(rep["correct"].get<int64_t>(), ref["correct"].get<int64_t>());
  EXPECT_NEAR(rep["loss"].get<double>(), ref["loss"].get<double>(),
              2e-5 * ref["loss"].get<double>());
  EXPECT_NEAR(rep["perplexity"].get<double>(), ref["perplexity"].get<double>(),
              1e-4 * ref["perplexity"].get<double>());
  EXPECT_DOUBLE_EQ(rep["token_accuracy"].get<double>(),
                   ref["accuracy"].get<double>());
  EXPECT_EQ(rep["examples"].get<int64_t>(), 5);
  EXPECT_EQ(rep["batches"].get<int64_t>(), 3);
  // The numbers are also the job's final progress metrics.
  EXPECT_NEAR(ran.final_metrics["eval_loss"], ref["loss"].get<double>(),
              2e-5 * ref["loss"].get<double>());
  EXPECT_DOUBLE_EQ(ran.final_metrics["eval_token_accuracy"],
                   ref["accuracy"].get<double>());
  EXPECT_GE(ran.progress_calls, 4);  // start + one per batch
  EXPECT_NE(access((dir + "/report.json.tmp").c_str(), F_OK), 0);
}

TEST(EvalJobTest, BatchSizeDoesNotChangeTheLoss) {
  const std::string dir = TempDir();
  auto spec = EvalSpec(dir + "/r.json");
  spec.mutable_data()->set_batch_size(5);
  auto job = NewEvalJob();
  Ran ran = RunJob(*job, spec);
  ASSERT_TRUE(ran.status.ok()) << ran.status;
  const json ref = Reference()["eval"];
  EXPECT_NEAR(ran.final_metrics["eval_loss"], ref["loss"].get<double>(),
              2e-5 * ref["loss"].get<double>());
  EXPECT_EQ(ran.final_metrics["eval_tokens"], ref["tokens"].get<double>());
}

TEST(EvalJobTest, GenerationMetricsUseTheLastModelTurnAsReference) {
  const std::string dir = TempDir();
  auto spec = EvalSpec(dir + "/report.json");
  spec.mutable_eval()->set_generate_examples(3);
  spec.mutable_eval()->set_max_new_tokens(6);
  auto job = NewEvalJob();
  Ran ran = RunJob(*job, spec);
  ASSERT_TRUE(ran.status.ok()) << ran.status;
  const json gen = json::parse(ReadAll(dir + "/report.json"))["generation"];
  ASSERT_EQ(gen["examples"].get<int>(), 3);
  const auto& s = gen["samples"];
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0]["reference"], "<s_total>12.50</s_total>");
  EXPECT_EQ(s[1]["reference"], "the price is 3.20");
  EXPECT_EQ(s[2]["reference"], "the date is 2024 01 31 receipt total 99.00");
  GenerationMetrics m;
  for (const auto& x : s) {
    m.Add(x["prediction"].get<std::string>(),
          x["reference"].get<std::string>());
  }
  EXPECT_DOUBLE_EQ(gen["exact_match"].get<double>(), m.exact_match());
  EXPECT_DOUBLE_EQ(gen["cer"].get<double>(), m.cer());
  EXPECT_DOUBLE_EQ(gen["field_f1"].get<double>(), m.fields().f1());
  EXPECT_GT(m.cer(), 0.0);  // a random model does not read receipts
  EXPECT_DOUBLE_EQ(ran.final_metrics["eval_cer"], m.cer());
  EXPECT_DOUBLE_EQ(ran.final_metrics["eval_field_f1"], m.fields().f1());
}

// Greedy tokens of a left-padded batch (three prompt lengths, one image)
// equal transformers' generate; batch size 1 gives the same.
TEST(GenerateJobTest, GreedyTokensEqualTransformers) {
  const json ref = Reference()["generate"];
  const int max_new = Reference()["generate_max_new_tokens"].get<int>();
  for (int batch : {3, 1}) {
    SCOPED_TRACE(batch);
    const std::string dir = TempDir();
    auto job = NewGenerateJob();
    Ran ran = RunJob(*job, GenerateSpec(dir + "/out.jsonl", batch));
    ASSERT_TRUE(ran.status.ok()) << ran.status;
    EXPECT_EQ(ran.final_metrics["examples"], 3);
    std::vector<json> rows = ReadJsonl(dir + "/out.jsonl");
    ASSERT_EQ(rows.size(), ref.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      SCOPED_TRACE(ref[i]["id"].dump());
      EXPECT_EQ(rows[i]["id"], ref[i]["id"]);
      EXPECT_EQ(rows[i]["tokens"], ref[i]["tokens"]);
      const auto& toks = ref[i]["tokens"];
      const bool stopped = toks.size() < static_cast<size_t>(max_new) ||
                           toks.back() == 1 || toks.back() == 6;
      EXPECT_EQ(rows[i]["finish_reason"], stopped ? "stop" : "length");
      EXPECT_TRUE(rows[i]["output"].is_string());
      EXPECT_THAT(rows[i]["prompt"].get<std::string>(),
                  HasSubstr("<start_of_turn>model\n"));
    }
    EXPECT_THAT(rows[1]["prompt"].get<std::string>(),
                HasSubstr("<start_of_image><end_of_image>"));
  }
}

TEST(GenerateJobTest, StopStringsEndRows) {
  const std::string dir = TempDir();
  auto job = NewGenerateJob();
  Ran full = RunJob(*job, GenerateSpec(dir + "/full.jsonl", 3));
  ASSERT_TRUE(full.status.ok()) << full.status;
  std::vector<json> base = ReadJsonl(dir + "/full.jsonl");
  ASSERT_EQ(base.size(), 3u);
  // A stop string from the middle of the longest output.
  size_t longest = 0;
  for (size_t i = 1; i < base.size(); ++i) {
    if (base[i]["output"].get<std::string>().size() >
        base[longest]["output"].get<std::string>().size())
      longest = i;
  }
  const std::string text = base[longest]["output"];
  ASSERT_GE(text.size(), 2u) << "outputs too short to cut: " << text;
  const std::string stop = text.substr(text.size() / 2, 1);
  auto spec = GenerateSpec(dir + "/cut.jsonl", 3);
  spec.mutable_generate()->add_stop(stop);
  Ran cut = RunJob(*job, spec);
  ASSERT_TRUE(cut.status.ok()) << cut.status;
  std::vector<json> rows = ReadJsonl(dir + "/cut.jsonl");
  ASSERT_EQ(rows.size(), 3u);
  int cut_rows = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::string t = base[i]["output"];
    const std::vector<int64_t> all = base[i]["tokens"];
    const std::vector<int64_t> got = rows[i]["tokens"];
    const size_t at = t.find(stop);
    if (at == std::string::npos) {
      EXPECT_EQ(rows[i]["output"], t);
      EXPECT_EQ(got, all);
      continue;
    }
    ++cut_rows;
    EXPECT_EQ(rows[i]["output"], t.substr(0, at)) << "stop " << stop;
    EXPECT_EQ(rows[i]["finish_reason"], "stop");
    ASSERT_LE(got.size(), all.size());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), all.begin()));
  }
  EXPECT_GE(cut_rows, 1);
}

TEST(GenerateJobTest, SamplingRepeatsWithTheSameSeed) {
  const std::string dir = TempDir();
  auto job = NewGenerateJob();
  std::vector<std::vector<json>> runs;
  for (int seed : {7, 7, 8}) {
    auto spec = GenerateSpec(dir + "/s.jsonl", 3);
    spec.mutable_generate()->set_temperature(2.0);
    spec.mutable_generate()->set_top_k(100);
    spec.mutable_generate()->set_top_p(0.95);
    spec.mutable_generate()->set_seed(seed);
    Ran ran = RunJob(*job, spec);
    ASSERT_TRUE(ran.status.ok()) << ran.status;
    runs.push_back(ReadJsonl(dir + "/s.jsonl"));
    ASSERT_EQ(runs.back().size(), 3u);
  }
  for (size_t i = 0; i < 3; ++i)
    EXPECT_EQ(runs[0][i]["tokens"], runs[1][i]["tokens"]);
  bool differs = false;
  for (size_t i = 0; i < 3; ++i)
    differs |= runs[0][i]["tokens"] != runs[2][i]["tokens"];
  EXPECT_TRUE(differs) << "seed 8 sampled what seed 7 did";
  // Sampling is not greedy: some row leaves the greedy path.
  const json ref = Reference()["generate"];
  bool left_greedy = false;
  for (size_t i = 0; i < 3; ++i)
    left_greedy |= runs[0][i]["tokens"] != ref[i]["tokens"];
  EXPECT_TRUE(left_greedy);
}

TEST(GenerateJobTest, BadInputNamesFileAndLine) {
  const std::string dir = TempDir();
  const std::string img = Fixture("images/a.png");
  {
    std::ofstream f(dir + "/bad.jsonl");
    f << R"({"id": "ok", "messages": [{"role": "user", "content": "tea"}]})"
      << "\n"
      << R"({"id": "broken", "messages": [)"
      << "\n";
  }
  {
    std::ofstream f(dir + "/noimg.jsonl");
    f << R"({"messages": [{"role": "user", "content": [{"type": "image", "path": ")"
      << img << R"("}]}]})"
      << "\n\n"
      << R"({"messages": [{"role": "user", "content": [{"type": "image", "path": "nope.png"}]}]})"
      << "\n";
  }
  auto job = NewGenerateJob();
  auto spec = GenerateSpec(dir + "/out.jsonl", 2);
  spec.mutable_generate()->set_input(dir + "/bad.jsonl");
  Ran bad = RunJob(*job, spec);
  EXPECT_FALSE(bad.status.ok());
  EXPECT_THAT(std::string(bad.status.message()),
              HasSubstr(dir + "/bad.jsonl:2"));
  spec.mutable_generate()->set_input(dir + "/noimg.jsonl");
  Ran missing = RunJob(*job, spec);
  EXPECT_FALSE(missing.status.ok());
  EXPECT_THAT(std::string(missing.status.message()),
              HasSubstr(dir + "/noimg.jsonl:3"));
  EXPECT_THAT(std::string(missing.status.message()), HasSubstr("nope.png"));
  EXPECT_NE(access((dir + "/out.jsonl").c_str(), F_OK), 0);  // nothing written
}

}  // namespace
}  // namespace gemma
