// YAML recipes <-> JobSpec. A recipe is the JobSpec message in YAML, with the
// proto's field names as keys and enums by their short lower-case name:
//
//   kind: diagnose
//   parallel: {tp: 2, dp: 2}
//   resources: {device: cpu}
//   restart: {max_restarts: 2, backoff_seconds: 1}
//   diagnose: {steps: 100, matrix_size: 256}
//
// Parsing is strict: unknown keys, wrong types and bad enum names are
// INVALID_ARGUMENT naming the source and the key path
// ("recipe.yaml: parallel.tpp: unknown key (known: tp, ep, dp)").
#ifndef GEMMA_CLI_JOB_SPEC_YAML_H_
#define GEMMA_CLI_JOB_SPEC_YAML_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gemma/v1/job_spec.pb.h"

namespace gemma {

// Parses YAML text; `source` names it in errors (a file name). `overrides` are
// "a.b.c=value" pairs applied to the YAML tree before conversion (the value
// is read as YAML, so "3", "true", "[a, b]" keep their types).
absl::StatusOr<gemma::v1::JobSpec> ParseJobSpecYaml(
    const std::string& text, const std::string& source,
    const std::vector<std::string>& overrides = {});

// Reads `path` and parses it as above. NOT_FOUND when the file is missing.
absl::StatusOr<gemma::v1::JobSpec> LoadJobSpecFile(
    const std::string& path, const std::vector<std::string>& overrides = {});

}  // namespace gemma

#endif  // GEMMA_CLI_JOB_SPEC_YAML_H_
