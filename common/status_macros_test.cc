#include "common/status_macros.h"

#include "gtest/gtest.h"

namespace gemma {
namespace {

TEST(WithContextTest, PutsTheContextBeforeTheMessageAndKeepsTheCode) {
  const absl::Status s =
      WithContext("spec.data.train: ", absl::NotFoundError("/d.jsonl: gone"));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "spec.data.train: /d.jsonl: gone");
}

TEST(WithContextTest, OkStaysOk) {
  EXPECT_TRUE(WithContext("spec.data.train: ", absl::OkStatus()).ok());
}

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::Status Quarter(int x, int* out) {
  GEMMA_ASSIGN_OR_RETURN(int half, Half(x));
  GEMMA_RETURN_IF_ERROR(Half(half).status());
  *out = half / 2;
  return absl::OkStatus();
}

TEST(StatusMacrosTest, ReturnTheFirstError) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  EXPECT_EQ(Quarter(6, &out).message(), "odd");
  EXPECT_EQ(Quarter(7, &out).message(), "odd");
}

}  // namespace
}  // namespace gemma
