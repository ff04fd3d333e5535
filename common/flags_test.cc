#include "common/flags.h"

#include <cstdlib>
#include <optional>
#include <string>

#include "gtest/gtest.h"

namespace gemma {
namespace {

TEST(FlagSetTest, ParsesLongShortEqualsBoolRepeatedAndPositional) {
  FlagSet flags("prog", "does things");
  std::string out = "table";
  int64_t n = 3;
  bool follow = false;
  std::vector<std::string> sets;
  flags.String("output", &out, "format").Short('o');
  flags.Int("n", &n, "count");
  flags.Bool("follow", &follow, "follow");
  flags.Repeated("set", &sets, "overrides");
  ASSERT_TRUE(flags
                  .Parse({"job1", "-o", "json", "--n=7", "--follow", "--set",
                          "a=1", "--set=b=2", "--", "--not-a-flag"})
                  .ok());
  EXPECT_EQ(out, "json");
  EXPECT_EQ(n, 7);
  EXPECT_TRUE(follow);
  EXPECT_EQ(sets, (std::vector<std::string>{"a=1", "b=2"}));
  EXPECT_EQ(flags.positional(), (std::vector<std::string>{"job1", "--not-a-flag"}));
  EXPECT_TRUE(flags.WasSet("output"));
}

TEST(FlagSetTest, ErrorsNameTheFlag) {
  FlagSet flags("prog", "x");
  int64_t n = 0;
  flags.Int("steps", &n, "steps");
  absl::Status s = flags.Parse({"--steps", "ten"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--steps"), std::string::npos);
  FlagSet other("prog", "x");
  s = other.Parse({"--bogus"});
  EXPECT_NE(s.message().find("--bogus"), std::string::npos);
  FlagSet missing("prog", "x");
  missing.Int("steps", &n, "steps");
  EXPECT_FALSE(missing.Parse({"--steps"}).ok());
}

TEST(FlagSetTest, EnvironmentFallbackAndHelp) {
  setenv("GEMMA_FLAGS_TEST_ADDR", "10.0.0.1:1", 1);
  FlagSet flags("prog", "summary text");
  std::string addr = "127.0.0.1:7450";
  flags.String("coordinator", &addr, "where").Env("GEMMA_FLAGS_TEST_ADDR");
  ASSERT_TRUE(flags.Parse(std::vector<std::string>{}).ok());
  EXPECT_EQ(addr, "10.0.0.1:1");
  unsetenv("GEMMA_FLAGS_TEST_ADDR");

  FlagSet h("prog", "summary text");
  std::string x = "d";
  h.String("coordinator", &x, "where to connect");
  ASSERT_TRUE(h.Parse({"--help"}).ok());
  EXPECT_TRUE(h.help_requested());
  const std::string usage = h.Usage();
  EXPECT_NE(usage.find("summary text"), std::string::npos);
  EXPECT_NE(usage.find("--coordinator"), std::string::npos);
  EXPECT_NE(usage.find("(default: d)"), std::string::npos);
}

TEST(FlagSetTest, ParseOrExitPrintsHelpAndExitsZero) {
  FlagSet flags("prog sub", "summary text");
  int64_t n = 0;
  flags.Int("steps", &n, "steps");
  char* argv[] = {const_cast<char*>("prog"), const_cast<char*>("sub"),
                  const_cast<char*>("--steps"), const_cast<char*>("x"),
                  const_cast<char*>("--help")};
  ::testing::internal::CaptureStdout();
  const std::optional<int> exit_code = flags.ParseOrExit(5, argv, 2);
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(exit_code, 0);
  EXPECT_NE(out.find("Usage: prog sub [flags]"), std::string::npos);
}

TEST(FlagSetTest, ParseOrExitNamesTheBadFlagAndExitsTwo) {
  FlagSet flags("prog sub", "x");
  int64_t n = 0;
  flags.Int("steps", &n, "steps");
  flags.ErrorSuffix(" (see --help)");
  char* argv[] = {const_cast<char*>("prog"), const_cast<char*>("--steps"),
                  const_cast<char*>("ten")};
  ::testing::internal::CaptureStderr();
  const std::optional<int> exit_code = flags.ParseOrExit(3, argv);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(exit_code, 2);
  EXPECT_EQ(err, "prog sub: --steps: 'ten' is not an integer (see --help)\n");
}

TEST(FlagSetTest, ParseOrExitGoesOnAfterGoodFlags) {
  FlagSet flags("prog", "x");
  int64_t n = 0;
  flags.Int("steps", &n, "steps");
  char* argv[] = {const_cast<char*>("prog"), const_cast<char*>("--steps=4")};
  EXPECT_EQ(flags.ParseOrExit(2, argv), std::nullopt);
  EXPECT_EQ(n, 4);
}

TEST(FlagSetTest, UsageErrorUsesTheErrorPrefixAndExitsTwo) {
  FlagSet flags("gemmactl workers", "x");
  flags.ErrorPrefix("gemmactl");
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(flags.UsageError("--output must be table or json"), 2);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(),
            "gemmactl: --output must be table or json\n");
}

TEST(FlagSetTest, ParseErrorsSayWhatTheValueIsNot) {
  int64_t i64 = 0;
  int i = 0;
  double d = 0;
  bool b = false;
  FlagSet flags("prog", "x");
  flags.Int("a", &i64, "");
  flags.Int("b", &i, "");
  flags.Double("c", &d, "");
  flags.Bool("d", &b, "");
  EXPECT_EQ(flags.Parse({"--a", "x"}).message(), "--a: 'x' is not an integer");
  EXPECT_EQ(flags.Parse({"--b", "x"}).message(), "--b: 'x' is not an integer");
  EXPECT_EQ(flags.Parse({"--c", "x"}).message(), "--c: 'x' is not a number");
  EXPECT_EQ(flags.Parse({"--d=x"}).message(), "--d: 'x' is not true or false");
  ASSERT_TRUE(flags.Parse({"--a", "-3", "--b=7", "--c", "0.5", "--d=no"}).ok());
  EXPECT_EQ(i64, -3);
  EXPECT_EQ(i, 7);
  EXPECT_EQ(d, 0.5);
  EXPECT_FALSE(b);
}

}  // namespace
}  // namespace gemma
