// `gemmactl local forward|generate` as a real process on the parity cases:
// its logits and greedy tokens must match transformers' references.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/local_model.h"
#include "tests/integration/subprocess.h"
#include "tests/parity/raw_tensors.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

std::string Case(const std::string& name) {
  const char* env = std::getenv("GEMMA_PARITY_DATA");
  return std::string(env != nullptr ? env : GEMMA_BINARY_DIR "/parity_data") +
         "/" + name;
}

// gemmactl of this build, unless GEMMA_BIN_DIR points elsewhere.
const bool kBinDirSet =
    setenv("GEMMA_BIN_DIR", GEMMA_BINARY_DIR "/bin", /*overwrite=*/0) == 0;

// The last line of `output` that is a JSON object.
nlohmann::json LastJson(const std::string& output) {
  nlohmann::json j;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    if (!line.empty() && line.front() == '{') {
      j = nlohmann::json::parse(std::string(line), nullptr, false);
    }
  }
  return j;
}

class LocalForwardTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LocalForwardTest, LogitsMatchTransformers) {
  const std::string dir = Case(GetParam());
  const std::string tmp = testing::MakeTempDir("local_forward");
  const std::string out = tmp + "/logits.safetensors";
  std::string output;
  int rc = testing::RunProgram(
      {testing::BinPath("gemmactl"), "local", "forward", "--model", dir,
       "--inputs", dir + "/inputs.safetensors", "--out", out, "-o", "json"},
      &output, absl::Seconds(120));
  ASSERT_EQ(rc, 0) << output;
  nlohmann::json summary = LastJson(output);
  ASSERT_TRUE(summary.is_object()) << output;
  EXPECT_EQ(summary["out"], out);
  auto logits = cli::ReadSafetensors(out);
  ASSERT_TRUE(logits.ok()) << logits.status();
  auto io = ReadRawTensors(dir + "/io");
  ASSERT_TRUE(io.ok()) << io.status();
  const torch::Tensor& ref = io->at("logits");
  const torch::Tensor& ours = logits->at("logits");
  ASSERT_EQ(ours.sizes(), ref.sizes());
  EXPECT_LE((ours - ref).abs().max().item<double>(),
            1e-4 * ref.abs().max().item<double>());
  // (std::filesystem::remove_all is avoided: libtorch.so interposes a broken
  // copy.)
  std::remove(out.c_str());
  ::rmdir(tmp.c_str());
}

INSTANTIATE_TEST_SUITE_P(Cases, LocalForwardTest,
                         ::testing::Values("vl_two_images_batch2",
                                           "text_softcap_batch2"));

TEST(LocalGenerateTest, GreedyMatchesTransformers) {
  const std::string dir = Case("text_mha");
  auto io = ReadRawTensors(dir + "/io");
  ASSERT_TRUE(io.ok()) << io.status();
  torch::Tensor prompt = io->at("input_ids")[0].contiguous();
  std::vector<int64_t> ids(prompt.data_ptr<int64_t>(),
                           prompt.data_ptr<int64_t>() + prompt.numel());
  torch::Tensor ref = io->at("greedy_tokens")[0].contiguous();
  std::vector<int64_t> expected(ref.data_ptr<int64_t>(),
                                ref.data_ptr<int64_t>() + ref.numel());
  for (const char* cache_flag : {"--no-cache=false", "--no-cache"}) {
    std::string output;
    int rc = testing::RunProgram(
        {testing::BinPath("gemmactl"), "local", "generate", "--model", dir,
         "--prompt-ids", absl::StrJoin(ids, ","), "--max-new-tokens",
         std::to_string(expected.size()), "--stop-ids", "none", cache_flag,
         "-o", "json"},
        &output, absl::Seconds(120));
    ASSERT_EQ(rc, 0) << output;
    nlohmann::json j = LastJson(output);
    ASSERT_TRUE(j.is_object()) << output;
    EXPECT_EQ(j["tokens"].get<std::vector<int64_t>>(), expected) << cache_flag;
  }
}

TEST(LocalGenerateTest, SamplingRepeatsWithTheSameSeed) {
  const std::string dir = Case("text_mha");
  std::vector<std::vector<int64_t>> runs;
  for (const char* seed : {"5", "5", "6"}) {
    std::string output;
    int rc = testing::RunProgram({testing::BinPath("gemmactl"),
                                  "local",
                                  "generate",
                                  "--model",
                                  dir,
                                  "--prompt-ids",
                                  "2,11,12,13",
                                  "--max-new-tokens",
                                  "12",
                                  "--temperature",
                                  "1.5",
                                  "--top-k",
                                  "50",
                                  "--top-p",
                                  "0.95",
                                  "--seed",
                                  seed,
                                  "--stop-ids",
                                  "none",
                                  "-o",
                                  "json"},
                                 &output, absl::Seconds(120));
    ASSERT_EQ(rc, 0) << output;
    runs.push_back(LastJson(output)["tokens"].get<std::vector<int64_t>>());
    EXPECT_EQ(runs.back().size(), 12u);
  }
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_NE(runs[0], runs[2]);
}

TEST(LocalCliTest, BadArgumentsAreReported) {
  std::string output;
  EXPECT_EQ(testing::RunProgram(
                {testing::BinPath("gemmactl"), "local", "forward"}, &output),
            2);
  EXPECT_THAT(output, HasSubstr("--model, --inputs and --out are required"));
  EXPECT_EQ(testing::RunProgram(
                {testing::BinPath("gemmactl"), "local", "generate", "--model",
                 "/nonexistent/model", "--prompt-ids", "2,3"},
                &output),
            1);
  EXPECT_THAT(output, HasSubstr("/nonexistent/model: not a model folder"));
  EXPECT_EQ(testing::RunProgram(
                {testing::BinPath("gemmactl"), "local", "generate", "--model",
                 Case("text_mha"), "--prompt-ids", "2,99999"},
                &output),
            2);
  EXPECT_THAT(output, HasSubstr("99999 is outside the vocabulary (256)"));
  EXPECT_EQ(testing::RunProgram(
                {testing::BinPath("gemmactl"), "local", "generate", "--help"},
                &output),
            0);
  EXPECT_THAT(output, HasSubstr("--prompt-ids"));
  EXPECT_EQ(testing::RunProgram(
                {testing::BinPath("gemmactl"), "local", "--help"}, &output),
            0);
  EXPECT_THAT(output, HasSubstr("Examples"));
  EXPECT_EQ(testing::RunProgram(
                {testing::BinPath("gemmactl"), "local", "frobnicate"}, &output),
            2);
}

}  // namespace
}  // namespace gemma
