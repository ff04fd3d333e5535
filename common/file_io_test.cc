#include "common/file_io.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace gemma {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir != nullptr ? dir : "/tmp", "/file_io_test_", getpid(),
                      "_", name);
}

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

TEST(ReadFileToStringTest, ReadsTheBytesBack) {
  const std::string path = TempPath("read.bin");
  const std::string bytes("a\0b\r\nc", 7);
  ASSERT_TRUE(WriteFileAtomic(path, bytes).ok());
  absl::StatusOr<std::string> got = ReadFileToString(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, bytes);
  std::remove(path.c_str());
}

TEST(ReadFileToStringTest, MissingFileIsNotFoundAndNamesThePath) {
  const std::string path = TempPath("missing.json");
  absl::StatusOr<std::string> got = ReadFileToString(path);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(got.status().message(), path + ": cannot open");
}

TEST(ListFilesWithSuffixTest, ListsMatchingNamesSortedWithTheFolder) {
  const std::string dir = TempPath("list");
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  for (const char* name :
       {"b.safetensors", "a.safetensors", "config.json", "c.safetensors.tmp"}) {
    ASSERT_TRUE(WriteFileAtomic(dir + "/" + name, "x").ok());
  }
  EXPECT_EQ(ListFilesWithSuffix(dir, ".safetensors"),
            (std::vector<std::string>{dir + "/a.safetensors",
                                      dir + "/b.safetensors"}));
  for (const char* name :
       {"b.safetensors", "a.safetensors", "config.json", "c.safetensors.tmp"}) {
    std::remove((dir + "/" + name).c_str());
  }
  rmdir(dir.c_str());
}

TEST(ListFilesWithSuffixTest, MissingFolderGivesNothing) {
  EXPECT_TRUE(ListFilesWithSuffix(TempPath("no-such-dir"), ".json").empty());
}

TEST(WriteFileAtomicTest, WritesAndReplacesWithoutLeavingTheTemporary) {
  const std::string path = TempPath("replace.txt");
  ASSERT_TRUE(WriteFileAtomic(path, "old").ok());
  EXPECT_EQ(Read(path), "old");
  ASSERT_TRUE(WriteFileAtomic(path, std::string("new\0bytes", 9)).ok());
  EXPECT_EQ(Read(path), std::string("new\0bytes", 9));
  EXPECT_FALSE(Exists(absl::StrCat(path, ".tmp.", getpid())));
  std::remove(path.c_str());
}

TEST(WriteFileAtomicTest, FailedWriteNamesTheTemporaryFile) {
  const std::string path = "/nonexistent-dir/file_io_test/f.json";
  const absl::Status s = WriteFileAtomic(path, "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(absl::StrContains(
      s.message(), absl::StrCat(path, ".tmp.", getpid(), ": write failed")))
      << s;
}

TEST(WriteFileAtomicTest, FailedRenameNamesBothPathsAndLeavesNoTemporary) {
  // A folder cannot be replaced by a file.
  const std::string dir = TempPath("dir");
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  const absl::Status s = WriteFileAtomic(dir, "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(absl::StrContains(s.message(), "cannot rename to " + dir)) << s;
  EXPECT_FALSE(Exists(absl::StrCat(dir, ".tmp.", getpid())));
  rmdir(dir.c_str());
}

}  // namespace
}  // namespace gemma
