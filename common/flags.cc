#include "common/flags.h"

#include <cstdlib>
#include <iostream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

bool ParseValue(absl::string_view v, int64_t* dst) {
  return absl::SimpleAtoi(v, dst);
}
bool ParseValue(absl::string_view v, int* dst) {
  return absl::SimpleAtoi(v, dst);
}
bool ParseValue(absl::string_view v, double* dst) {
  return absl::SimpleAtod(v, dst);
}
bool ParseValue(absl::string_view v, bool* dst) {
  if (v == "true" || v == "1" || v == "yes") {
    *dst = true;
  } else if (v == "false" || v == "0" || v == "no") {
    *dst = false;
  } else {
    return false;
  }
  return true;
}

// Sets *dst from a flag's text; the error names the flag and says the text is
// not `what` ("an integer").
template <typename T>
std::function<absl::Status(const std::string&)> ParsingSetter(
    const std::string& name, T* dst, const char* what) {
  return [dst, name, what](const std::string& v) {
    if (!ParseValue(v, dst)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, ": '", v, "' is not ", what));
    }
    return absl::OkStatus();
  };
}

}  // namespace

FlagSet::FlagSet(std::string program, std::string summary)
    : program_(std::move(program)),
      summary_(std::move(summary)),
      error_prefix_(program_) {}

FlagSet::Flag& FlagSet::Add(const std::string& name, std::string help,
                            std::string default_text, bool is_bool,
                            std::function<absl::Status(const std::string&)> set) {
  auto f = std::make_unique<Flag>();
  f->name_ = name;
  f->help_ = std::move(help);
  f->default_text_ = std::move(default_text);
  f->is_bool_ = is_bool;
  f->set_ = std::move(set);
  flags_.push_back(std::move(f));
  return *flags_.back();
}

FlagSet::Flag& FlagSet::String(const std::string& name, std::string* dst,
                               std::string help) {
  return Add(name, std::move(help), *dst, false, [dst](const std::string& v) {
    *dst = v;
    return absl::OkStatus();
  });
}

FlagSet::Flag& FlagSet::Int(const std::string& name, int64_t* dst,
                            std::string help) {
  return Add(name, std::move(help), absl::StrCat(*dst), false,
             ParsingSetter(name, dst, "an integer"));
}

FlagSet::Flag& FlagSet::Int(const std::string& name, int* dst, std::string help) {
  return Add(name, std::move(help), absl::StrCat(*dst), false,
             ParsingSetter(name, dst, "an integer"));
}

FlagSet::Flag& FlagSet::Double(const std::string& name, double* dst,
                               std::string help) {
  return Add(name, std::move(help), absl::StrCat(*dst), false,
             ParsingSetter(name, dst, "a number"));
}

FlagSet::Flag& FlagSet::Bool(const std::string& name, bool* dst, std::string help) {
  return Add(name, std::move(help), *dst ? "true" : "false", true,
             ParsingSetter(name, dst, "true or false"));
}

FlagSet::Flag& FlagSet::Repeated(const std::string& name,
                                 std::vector<std::string>* dst, std::string help) {
  return Add(name, std::move(help), "", false, [dst](const std::string& v) {
    dst->push_back(v);
    return absl::OkStatus();
  });
}

void FlagSet::Positional(std::string usage, std::string help) {
  positional_usage_ = std::move(usage);
  positional_help_ = std::move(help);
}

FlagSet::Flag* FlagSet::Find(const std::string& name) {
  for (auto& f : flags_) {
    if (f->name_ == name) return f.get();
  }
  return nullptr;
}

FlagSet::Flag* FlagSet::FindShort(char c) {
  for (auto& f : flags_) {
    if (f->short_name_ == c) return f.get();
  }
  return nullptr;
}

bool FlagSet::WasSet(const std::string& name) const {
  for (const auto& f : flags_) {
    if (f->name_ == name) return f->seen_;
  }
  return false;
}

absl::Status FlagSet::Parse(int argc, char** argv, int first) {
  std::vector<std::string> args;
  for (int i = first; i < argc; ++i) args.emplace_back(argv[i]);
  return Parse(args);
}

absl::Status FlagSet::Parse(const std::vector<std::string>& args) {
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      help_requested_ = true;
      return absl::OkStatus();
    }
  }
  bool only_positional = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (only_positional || a.size() < 2 || a[0] != '-') {
      positional_.push_back(a);
      continue;
    }
    if (a == "--") {
      only_positional = true;
      continue;
    }
    Flag* f = nullptr;
    std::string value;
    bool has_value = false;
    std::string shown;
    if (a[1] == '-') {
      std::string body = a.substr(2);
      size_t eq = body.find('=');
      if (eq != std::string::npos) {
        value = body.substr(eq + 1);
        body = body.substr(0, eq);
        has_value = true;
      }
      f = Find(body);
      shown = "--" + body;
    } else if (a.size() == 2) {
      f = FindShort(a[1]);
      shown = a;
    }
    if (f == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown flag ", shown.empty() ? a : shown, " (see ", program_, " --help)"));
    }
    if (!has_value) {
      if (f->is_bool_) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("--", f->name_, " needs a value"));
      }
    }
    absl::Status s = f->set_(value);
    if (!s.ok()) return s;
    f->seen_ = true;
  }
  for (auto& f : flags_) {
    if (f->seen_ || f->env_.empty()) continue;
    const char* v = std::getenv(f->env_.c_str());
    if (v == nullptr || *v == '\0') continue;
    absl::Status s = f->set_(v);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("environment variable ", f->env_, ": ", s.message()));
    }
    f->seen_ = true;
  }
  return absl::OkStatus();
}

std::optional<int> FlagSet::ParseOrExit(int argc, char** argv, int first) {
  const absl::Status parsed = Parse(argc, argv, first);
  if (help_requested_) {
    std::cout << Usage();
    return 0;
  }
  if (!parsed.ok()) return UsageError(parsed.message());
  return std::nullopt;
}

int FlagSet::UsageError(absl::string_view message) const {
  std::cerr << error_prefix_ << ": " << message << error_suffix_ << "\n";
  return 2;
}

std::string FlagSet::Usage() const {
  std::ostringstream out;
  out << "Usage: " << program_ << " [flags]";
  if (!positional_usage_.empty()) out << ' ' << positional_usage_;
  out << "\n\n" << summary_ << "\n";
  if (!positional_help_.empty()) out << "\n" << positional_help_ << "\n";
  out << "\nFlags:\n";
  for (const auto& f : flags_) {
    std::string lhs = "  ";
    if (f->short_name_) lhs += std::string("-") + f->short_name_ + ", ";
    lhs += "--" + f->name_;
    if (!f->is_bool_) lhs += " " + f->meta_;
    out << lhs;
    if (lhs.size() < 30) {
      out << std::string(30 - lhs.size(), ' ');
    } else {
      out << "\n" << std::string(30, ' ');
    }
    out << f->help_;
    if (!f->default_text_.empty()) out << " (default: " << f->default_text_ << ")";
    if (!f->env_.empty()) out << " [env " << f->env_ << "]";
    out << "\n";
  }
  out << "  -h, --help                  Show this help.\n";
  if (!epilog_.empty()) out << "\n" << epilog_ << "\n";
  return out.str();
}

}  // namespace gemma
