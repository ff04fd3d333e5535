#include "common/flags.h"

#include <cstdlib>

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

}  // namespace
}  // namespace gemma
