// Helpers shared by the formats tests: temp folders and running python.
#ifndef GEMMA_TESTS_FORMATS_TEST_UTIL_H_
#define GEMMA_TESTS_FORMATS_TEST_UTIL_H_

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace gemma::testing {

// A fresh folder under TMPDIR, removed at destruction.
class TempDir {
 public:
  TempDir() {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "gemma-fmt-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  // Not std::filesystem::remove_all: it crashes in binaries linked to
  // LibTorch 2.11 (libtorch.so exports a broken copy).
  ~TempDir() {
    auto rm = [](const char* p, const struct stat*, int, struct FTW*) {
      return ::remove(p);
    };
    ::nftw(path_.c_str(), rm, 16, FTW_DEPTH | FTW_PHYS);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const {
    return path_ + "/" + name;
  }

 private:
  std::string path_;
};

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs a shell command line, capturing its output.
inline RunResult Run(const std::string& cmd) {
  TempDir tmp;
  const std::string out = tmp / "out.txt";
  RunResult r;
  int rc = std::system((cmd + " >" + out + " 2>&1").c_str());
  r.exit_code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  std::ifstream in(out);
  std::stringstream ss;
  ss << in.rdbuf();
  r.output = ss.str();
  return r;
}

// Runs tests/formats/SCRIPT with the venv python.
inline RunResult RunPython(const std::string& script, const std::string& args) {
  return Run(std::string(GEMMA_PYTHON_EXE) + " " + GEMMA_SOURCE_DIR +
             "/tests/formats/" + script + " " + args);
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

}  // namespace gemma::testing

#endif  // GEMMA_TESTS_FORMATS_TEST_UTIL_H_
