// Minimal leveled logging to stderr: `GEMMA_LOG(INFO) << "started on " << addr;`
// Thread-safe (one line is written with one call). Level from GEMMA_LOG_LEVEL
// (DEBUG, INFO, WARNING, ERROR; default INFO).
#ifndef GEMMA_COMMON_LOG_H_
#define GEMMA_COMMON_LOG_H_

#include <sstream>
#include <string>

namespace gemma {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// True when messages at `level` are written.
bool LogEnabled(LogLevel level);

// Sets the process-wide program name shown in each line (e.g. "coordinator").
void SetLogTag(const std::string& tag);

class LogLine {
 public:
  LogLine(LogLevel level, const char* file, int line);
  ~LogLine();
  std::ostream& stream() { return out_; }

 private:
  LogLevel level_;
  std::ostringstream out_;
};

}  // namespace gemma

#define GEMMA_LOG_LEVEL_DEBUG ::gemma::LogLevel::kDebug
#define GEMMA_LOG_LEVEL_INFO ::gemma::LogLevel::kInfo
#define GEMMA_LOG_LEVEL_WARNING ::gemma::LogLevel::kWarning
#define GEMMA_LOG_LEVEL_ERROR ::gemma::LogLevel::kError

#define GEMMA_LOG(level)                                    \
  if (!::gemma::LogEnabled(GEMMA_LOG_LEVEL_##level)) {      \
  } else                                                    \
    ::gemma::LogLine(GEMMA_LOG_LEVEL_##level, __FILE__, __LINE__).stream()

#endif  // GEMMA_COMMON_LOG_H_
