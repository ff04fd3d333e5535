// Helpers shared by the data tests: a fresh temp folder and running the
// parity scripts under tests/data_parity with the virtualenv's python.
#ifndef GEMMA_DATA_TEST_UTIL_H_
#define GEMMA_DATA_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace gemma {
namespace testing_util {

// A new empty folder under the test temp dir.
inline std::string MakeTempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/gemma_" +
                     name + "_XXXXXX";
  char* made = mkdtemp(tmpl.data());
  if (made == nullptr) ADD_FAILURE() << "mkdtemp failed for " << tmpl;
  return tmpl;
}

inline std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot read " << path;
  return std::string((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

#ifdef GEMMA_PYTHON
inline std::string LogPath(const std::string& script) {
  return "/tmp/gemma_parity_" + script + "_" + std::to_string(getpid()) +
         ".log";
}

// Runs tests/data_parity/SCRIPT with ARGS; returns the exit status.
inline int RunParityScript(const std::string& script, const std::string& args) {
  const std::string cmd = std::string(GEMMA_PYTHON) + " " + GEMMA_SOURCE_DIR +
                          "/tests/data_parity/" + script + " " + args + " > " +
                          LogPath(script) + " 2>&1";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    std::ifstream log(LogPath(script));
    std::string text((std::istreambuf_iterator<char>(log)),
                     std::istreambuf_iterator<char>());
    ADD_FAILURE() << cmd << " failed (" << rc << "):\n" << text;
  }
  return rc;
}
#endif

}  // namespace testing_util
}  // namespace gemma

#endif  // GEMMA_DATA_TEST_UTIL_H_
