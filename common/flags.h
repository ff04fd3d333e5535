// Command-line flags for our programs: `--name value`, `--name=value`, short
// aliases (`-o json`), booleans (`--follow`, `--follow=false`), repeated flags
// (`--set a=1 --set b=2`), positional arguments, an environment fallback, and a
// generated `--help` page. Flags bind to variables whose current value is the
// default, so configuration lands in typed structs at the edge.
//
//   gemma::FlagSet flags("gemmactl workers", "List the workers.");
//   std::string output = "table";
//   flags.String("output", &output, "table or json").Short('o');
//   if (auto exit_code = flags.ParseOrExit(argc, argv, 2)) return *exit_code;
//   if (output != "table" && output != "json")
//     return flags.UsageError("--output must be table or json");
#ifndef GEMMA_COMMON_FLAGS_H_
#define GEMMA_COMMON_FLAGS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace gemma {

class FlagSet {
 public:
  // One flag's description; returned by the adders for chained options.
  class Flag {
   public:
    // Also accept `-c`.
    Flag& Short(char c) { short_name_ = c; return *this; }
    // Take the value from this environment variable when the flag is absent.
    Flag& Env(std::string var) { env_ = std::move(var); return *this; }
    // Name of the value in --help (e.g. "HOST:PORT").
    Flag& Meta(std::string meta) { meta_ = std::move(meta); return *this; }

   private:
    friend class FlagSet;
    std::string name_;
    char short_name_ = 0;
    std::string env_;
    std::string meta_ = "VALUE";
    std::string help_;
    std::string default_text_;
    bool is_bool_ = false;
    bool seen_ = false;
    std::function<absl::Status(const std::string&)> set_;
  };

  FlagSet(std::string program, std::string summary);

  Flag& String(const std::string& name, std::string* dst, std::string help);
  Flag& Int(const std::string& name, int64_t* dst, std::string help);
  Flag& Int(const std::string& name, int* dst, std::string help);
  Flag& Double(const std::string& name, double* dst, std::string help);
  Flag& Bool(const std::string& name, bool* dst, std::string help);
  // Each occurrence appends one value.
  Flag& Repeated(const std::string& name, std::vector<std::string>* dst,
                 std::string help);

  // Names positional arguments in --help (e.g. "JOB").
  void Positional(std::string usage, std::string help);
  // Extra text at the end of --help (examples).
  void Epilog(std::string text) { epilog_ = std::move(text); }
  // How UsageError's line starts and ends: "<prefix>: <message><suffix>". The
  // prefix is the program name unless set; the suffix is empty unless set
  // (e.g. " (see --help)").
  void ErrorPrefix(std::string prefix) { error_prefix_ = std::move(prefix); }
  void ErrorSuffix(std::string suffix) { error_suffix_ = std::move(suffix); }

  // Parses argv[first..argc). `--help`/`-h` sets help_requested() and returns
  // OK without checking the rest. Errors name the flag (INVALID_ARGUMENT).
  absl::Status Parse(int argc, char** argv, int first = 1);
  absl::Status Parse(const std::vector<std::string>& args);

  // The whole command-line handling of a main(): Parse(argc, argv, first),
  // then after --help prints Usage() to stdout and returns 0, after a bad flag
  // prints UsageError's line and returns 2, and otherwise returns nullopt:
  //   if (auto exit_code = flags.ParseOrExit(argc, argv)) return *exit_code;
  std::optional<int> ParseOrExit(int argc, char** argv, int first = 1);
  // Prints "<prefix>: <message><suffix>" and a newline to stderr and returns
  // 2, the exit code of bad usage: for the checks after ParseOrExit.
  int UsageError(absl::string_view message) const;

  bool help_requested() const { return help_requested_; }
  // True when the flag was given on the command line or through its Env var.
  bool WasSet(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }
  std::string Usage() const;

 private:
  Flag& Add(const std::string& name, std::string help, std::string default_text,
            bool is_bool, std::function<absl::Status(const std::string&)> set);
  Flag* Find(const std::string& name);
  Flag* FindShort(char c);

  std::string program_;
  std::string summary_;
  std::string positional_usage_;
  std::string positional_help_;
  std::string epilog_;
  std::string error_prefix_;
  std::string error_suffix_;
  std::vector<std::unique_ptr<Flag>> flags_;
  std::vector<std::string> positional_;
  bool help_requested_ = false;
};

}  // namespace gemma

#endif  // GEMMA_COMMON_FLAGS_H_
