// Runs the real gemmactl binary: `data synth` end to end.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace {

std::string Gemmactl() {
  const char* bin = std::getenv("GEMMA_BIN_DIR");
  return std::string(bin != nullptr ? bin : GEMMA_BINARY_DIR "/bin") + "/gemmactl";
}

// Runs `cmd`, returns its exit code; stdout goes to *out.
int RunCmd(const std::string& cmd, std::string* out) {
  const std::string file = std::filesystem::temp_directory_path() / "gemmactl_data_test.out";
  const int rc = std::system((cmd + " > " + file + " 2>/dev/null").c_str());
  std::ifstream in(file);
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return WEXITSTATUS(rc);
}

TEST(GemmactlDataTest, SynthWritesDatasetAndReportsJson) {
  char tmpl[] = "/tmp/gemmactl_data_XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  std::string out;
  ASSERT_EQ(RunCmd(Gemmactl() + " data synth --help", &out), 0);
  EXPECT_THAT(out, ::testing::HasSubstr("--image-size"));
  ASSERT_EQ(RunCmd(Gemmactl() + " data synth --kind ocr --out " + dir + "/ds --n 3 --seed 4 --image-size 128 -o json",
                &out),
            0);
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["examples"], 3);
  EXPECT_TRUE(std::filesystem::exists(dir + "/ds/images/000002.png"));
  EXPECT_TRUE(std::filesystem::exists(j["tokenizer"].get<std::string>()));
  std::ifstream train(j["train_jsonl"].get<std::string>());
  int lines = 0;
  for (std::string line; std::getline(train, line);) ++lines;
  EXPECT_EQ(lines, 3);
  // --level easy: the grid receipts, said in the JSON.
  ASSERT_EQ(
      RunCmd(Gemmactl() + " data synth --kind ocr --level easy --out " + dir +
                 "/easy --n 2 --image-size 64 --no-tokenizer -o json",
             &out),
      0);
  EXPECT_EQ(nlohmann::json::parse(out)["level"], "easy");
  EXPECT_TRUE(std::filesystem::exists(dir + "/easy/images/000001.png"));
  // Bad usage and an occupied folder are refused.
  EXPECT_EQ(
      RunCmd(Gemmactl() + " data synth --level hard --out " + dir + "/y", &out),
      2);
  EXPECT_FALSE(std::filesystem::exists(dir + "/y"));
  EXPECT_EQ(RunCmd(Gemmactl() + " data synth --kind audio --out " + dir + "/x", &out), 2);
  EXPECT_EQ(RunCmd(Gemmactl() + " data synth --out " + dir + "/ds --n 2", &out), 1);
}

}  // namespace
