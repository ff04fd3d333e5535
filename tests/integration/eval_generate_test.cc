// The eval and generate jobs as a user runs them: submitted to a real
// coordinator, run by a real CPU worker, on the tiny transformers-made model
// of the evalgen fixture (jobs/evalgen_reference.py). The numbers land on the
// job (`gemmactl get -o json`), the report and outputs on disk; bad input
// fails the job with the file and line named.
#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_fixture.h"

namespace gemma::testing {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

std::string Fixture(const std::string& name) {
  return std::string(GEMMA_EVALGEN_FIXTURE) + "/" + name;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Submits with --follow; returns the exit code and sets the job name.
int SubmitAndFollow(LocalCluster& cluster, const std::string& name,
                    const std::string& yaml, std::string* job,
                    std::string* out) {
  const std::string path = cluster.WriteRecipe(name, yaml);
  const int rc = cluster.Ctl({"submit", "-f", path, "--follow"}, out);
  *job = out->substr(0, out->find(' '));
  return rc;
}

json Get(LocalCluster& cluster, const std::string& job) {
  std::string out;
  if (cluster.Ctl({"get", job, "-o", "json"}, &out) != 0) return json::object();
  return json::parse(out, nullptr, false);
}

TEST(EvalGenerateJobTest, EvalAndGenerateSucceedWithReportAndMetrics) {
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator());
  cluster.StartWorker();
  const json ref = json::parse(ReadAll(Fixture("reference.json")));
  const std::string report = cluster.dir() + "/eval.json";
  std::string job, out;
  ASSERT_EQ(SubmitAndFollow(
                cluster, "eval.yaml",
                "kind: eval\nresources: {device: cpu}\n"
                "model: {path: " +
                    Fixture("model") +
                    "}\n"
                    "data: {eval: " +
                    Fixture("eval.jsonl") +
                    ", batch_size: 2}\n"
                    "eval: {generate_examples: 2, max_new_tokens: 4, report: " +
                    report + "}\n",
                &job, &out),
            0)
      << out;
  ASSERT_TRUE(Exists(report));
  const json rep = json::parse(ReadAll(report));
  const double want = ref["eval"]["loss"].get<double>();
  EXPECT_NEAR(rep["loss"].get<double>(), want, 2e-5 * want);
  EXPECT_EQ(rep["generation"]["examples"].get<int>(), 2);
  const json j = Get(cluster, job);
  EXPECT_EQ(j.value("state", ""), "JOB_STATE_SUCCEEDED") << j.dump();
  const json& m = j["progress"]["metrics"];
  EXPECT_NEAR(m["eval_loss"].get<double>(), want, 2e-5 * want) << j.dump();
  EXPECT_DOUBLE_EQ(m["eval_token_accuracy"].get<double>(),
                   ref["eval"]["accuracy"].get<double>());
  EXPECT_TRUE(m.contains("eval_cer"));
  EXPECT_TRUE(m.contains("eval_field_f1"));
  EXPECT_TRUE(m.contains("eval_exact_match"));

  const std::string gen_out = cluster.dir() + "/gen.jsonl";
  ASSERT_EQ(SubmitAndFollow(cluster, "gen.yaml",
                            "kind: generate\nresources: {device: cpu}\n"
                            "model: {path: " +
                                Fixture("model") +
                                "}\n"
                                "generate: {input: " +
                                Fixture("prompts.jsonl") +
                                ", output: " + gen_out + ", max_new_tokens: " +
                                ref["generate_max_new_tokens"].dump() + "}\n",
                            &job, &out),
            0)
      << out;
  std::ifstream f(gen_out);
  std::string line;
  size_t i = 0;
  while (std::getline(f, line)) {
    const json row = json::parse(line, nullptr, false);
    ASSERT_FALSE(row.is_discarded()) << line;
    ASSERT_LT(i, ref["generate"].size());
    EXPECT_EQ(row["id"], ref["generate"][i]["id"]);
    EXPECT_EQ(row["tokens"], ref["generate"][i]["tokens"]);
    ++i;
  }
  EXPECT_EQ(i, ref["generate"].size());
  EXPECT_FALSE(Exists(gen_out + ".tmp"));
  const json g = Get(cluster, job);
  EXPECT_EQ(g["progress"]["metrics"]["examples"].get<double>(), 3.0)
      << g.dump();
}

TEST(EvalGenerateJobTest, BadInputFailsTheJobNamingFileAndLine) {
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator());
  cluster.StartWorker();
  const std::string bad_json = cluster.dir() + "/bad.jsonl";
  const std::string no_image = cluster.dir() + "/noimage.jsonl";
  {
    std::ofstream a(bad_json);
    a << R"({"messages": [{"role": "user", "content": "tea"}]})"
      << "\n"
      << R"({"messages": [{"role": "user", "content": "tea"}]})"
      << "\n"
      << "{not json\n";
    std::ofstream b(no_image);
    b << R"({"messages": [{"role": "user", "content": [{"type": "image", "path": "missing.png"}, )"
      << R"({"type": "text", "text": "Describe this image."}]}]})"
      << "\n";
  }
  struct Case {
    std::string kind, input, want;
  };
  for (const Case& c : {Case{"generate", bad_json, bad_json + ":3"},
                        Case{"generate", no_image, no_image + ":1"},
                        Case{"eval", bad_json, bad_json + ":3"},
                        Case{"eval", no_image, no_image + ":1"}}) {
    SCOPED_TRACE(c.kind + " " + c.input);
    const std::string yaml =
        c.kind == "generate"
            ? "kind: generate\nresources: {device: cpu}\nmodel: {path: " +
                  Fixture("model") + "}\ngenerate: {input: " + c.input +
                  ", output: " + cluster.dir() + "/out.jsonl}\n"
            : "kind: eval\nresources: {device: cpu}\nmodel: {path: " +
                  Fixture("model") + "}\ndata: {eval: " + c.input +
                  "}\neval: {report: " + cluster.dir() + "/r.json}\n";
    std::string job, out;
    EXPECT_NE(SubmitAndFollow(cluster, c.kind + ".yaml", yaml, &job, &out), 0)
        << out;
    const json j = Get(cluster, job);
    EXPECT_EQ(j.value("state", ""), "JOB_STATE_FAILED") << j.dump();
    EXPECT_THAT(j.dump(), HasSubstr(c.want));
    if (c.input == no_image) EXPECT_THAT(j.dump(), HasSubstr("missing.png"));
    EXPECT_FALSE(Exists(cluster.dir() + "/out.jsonl"));
    EXPECT_FALSE(Exists(cluster.dir() + "/r.json"));
  }
}

// `gemmactl local generate` in text mode (a real process): an image and a
// prompt, or a JSONL file, give the tokens transformers generates.
TEST(LocalGenerateTextTest, ImageAndPromptOrJsonlGiveTransformersTokens) {
  const json ref = json::parse(ReadAll(Fixture("reference.json")));
  const std::string max_new = ref["generate_max_new_tokens"].dump();
  std::string out;
  ASSERT_EQ(RunProgram({BinPath("gemmactl"), "local", "generate", "--model",
                        Fixture("model"), "--image", Fixture("images/a.png"),
                        "--prompt", "Describe this image.", "--max-new-tokens",
                        max_new, "-o", "json"},
                       &out, absl::Seconds(120)),
            0)
      << out;
  // stderr (the timing line) and stdout share `out`: find the JSON line.
  json row;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line[0] == '{') row = json::parse(line);
  }
  ASSERT_TRUE(row.is_object()) << out;
  EXPECT_EQ(row["tokens"], ref["generate"][1]["tokens"]) << out;  // "img"

  ASSERT_EQ(RunProgram({BinPath("gemmactl"), "local", "generate", "--model",
                        Fixture("model"), "--input", Fixture("prompts.jsonl"),
                        "--batch-size", "2", "--max-new-tokens", max_new, "-o",
                        "json"},
                       &out, absl::Seconds(120)),
            0)
      << out;
  std::vector<json> rows;
  std::istringstream all(out);
  for (std::string line; std::getline(all, line);) {
    if (!line.empty() && line[0] == '{') rows.push_back(json::parse(line));
  }
  ASSERT_EQ(rows.size(), ref["generate"].size()) << out;
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i]["id"], ref["generate"][i]["id"]);
    EXPECT_EQ(rows[i]["tokens"], ref["generate"][i]["tokens"]);
  }
  EXPECT_EQ(
      RunProgram({BinPath("gemmactl"), "local", "generate", "--help"}, &out),
      0);
  EXPECT_THAT(out, HasSubstr("--image"));
  EXPECT_EQ(RunProgram({BinPath("gemmactl"), "local", "generate", "--model",
                        Fixture("model"), "--image", Fixture("images/a.png")},
                       &out),
            2);
  EXPECT_THAT(out, HasSubstr("--prompt"));
}

}  // namespace
}  // namespace gemma::testing
