// Maps a job kind to the factory of its Job. The default registry holds every
// kind this build implements; creating any other kind is UNIMPLEMENTED.
#ifndef GEMMA_JOBS_REGISTRY_H_
#define GEMMA_JOBS_REGISTRY_H_

#include <functional>
#include <map>
#include <memory>

#include "absl/status/statusor.h"
#include "jobs/job.h"

namespace gemma {

class JobRegistry {
 public:
  using Factory = std::function<std::unique_ptr<Job>()>;

  // The registry with the built-in kinds (diagnose, and those that landed).
  static const JobRegistry& Default();

  // Replaces any factory of `kind`.
  void Register(gemma::v1::JobKind kind, Factory factory);
  bool Has(gemma::v1::JobKind kind) const { return factories_.count(kind) > 0; }
  // A fresh Job of `kind`, or UNIMPLEMENTED naming the kind.
  absl::StatusOr<std::unique_ptr<Job>> Create(gemma::v1::JobKind kind) const;

 private:
  std::map<gemma::v1::JobKind, Factory> factories_;
};

}  // namespace gemma

#endif  // GEMMA_JOBS_REGISTRY_H_
