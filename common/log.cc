#include "common/log.h"

#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace gemma {
namespace {

LogLevel ThresholdFromEnv() {
  const char* v = std::getenv("GEMMA_LOG_LEVEL");
  if (v == nullptr) return LogLevel::kInfo;
  if (std::strcmp(v, "DEBUG") == 0) return LogLevel::kDebug;
  if (std::strcmp(v, "WARNING") == 0) return LogLevel::kWarning;
  if (std::strcmp(v, "ERROR") == 0) return LogLevel::kError;
  return LogLevel::kInfo;
}

std::string& Tag() {
  static std::string* tag = new std::string("gemma");
  return *tag;
}

const char kLevelChar[] = {'D', 'I', 'W', 'E'};

}  // namespace

bool LogEnabled(LogLevel level) {
  static const LogLevel threshold = ThresholdFromEnv();
  return level >= threshold;
}

void SetLogTag(const std::string& tag) { Tag() = tag; }

LogLine::LogLine(LogLevel level, const char* file, int line) : level_(level) {
  timeval tv;
  gettimeofday(&tv, nullptr);
  tm t;
  localtime_r(&tv.tv_sec, &t);
  char ts[32];
  std::strftime(ts, sizeof(ts), "%H:%M:%S", &t);
  const char* base = std::strrchr(file, '/');
  out_ << kLevelChar[static_cast<int>(level)] << ' ' << ts << '.'
       << static_cast<int>(tv.tv_usec / 1000) << ' ' << Tag() << '['
       << getpid() << "] " << (base ? base + 1 : file) << ':' << line << "] ";
}

LogLine::~LogLine() {
  out_ << '\n';
  const std::string s = out_.str();
  // One write per line keeps lines whole when several threads log.
  ssize_t ignored = ::write(STDERR_FILENO, s.data(), s.size());
  (void)ignored;
}

}  // namespace gemma
