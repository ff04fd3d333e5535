// Whole-file reads and atomic whole-file writes (config.json, manifests, the
// JSON files of a training step folder).
#ifndef GEMMA_COMMON_FILE_IO_H_
#define GEMMA_COMMON_FILE_IO_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gemma {

// The bytes of the file at `path`; NotFound "PATH: cannot open" when it cannot
// be opened.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// The paths DIR/NAME of the entries of `dir` whose name ends in `suffix`
// (e.g. ".safetensors"), sorted; empty when `dir` cannot be read.
std::vector<std::string> ListFilesWithSuffix(const std::string& dir,
                                             const std::string& suffix);

// Writes `text` to `path` so that readers see either the old contents or the
// new ones, never a torn file: writes the temporary file PATH.tmp.PID, then
// renames it over PATH. No fsync: a crash can lose the new contents but not
// corrupt the old ones (model/checkpoint.cc has a durable variant for its
// manifests). On a failed write the temporary file is removed and the error
// is Internal "PATH.tmp.PID: write failed"; on a failed rename it is removed
// too and the error is Internal "PATH.tmp.PID: cannot rename to PATH: <errno
// text>".
absl::Status WriteFileAtomic(const std::string& path, const std::string& text);

}  // namespace gemma

#endif  // GEMMA_COMMON_FILE_IO_H_
