// Command-line flags for our programs: `--name value`, `--name=value`, short
// aliases (`-o json`), booleans (`--follow`, `--follow=false`), repeated flags
// (`--set a=1 --set b=2`), positional arguments, an environment fallback, and a
// generated `--help` page. Flags bind to variables whose current value is the
// default, so configuration lands in typed structs at the edge.
//
//   gemma::FlagSet flags("gemmactl workers", "List the workers.");
//   std::string output = "table";
//   flags.String("output", &output, "table or json").Short('o');
//   absl::Status s = flags.Parse(argc, argv, 2);
//   if (flags.help_requested()) { std::cout << flags.Usage(); return 0; }
#ifndef GEMMA_COMMON_FLAGS_H_
#define GEMMA_COMMON_FLAGS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"

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

  // Parses argv[first..argc). `--help`/`-h` sets help_requested() and returns
  // OK without checking the rest. Errors name the flag (INVALID_ARGUMENT).
  absl::Status Parse(int argc, char** argv, int first = 1);
  absl::Status Parse(const std::vector<std::string>& args);

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
  std::vector<std::unique_ptr<Flag>> flags_;
  std::vector<std::string> positional_;
  bool help_requested_ = false;
};

}  // namespace gemma

#endif  // GEMMA_COMMON_FLAGS_H_
