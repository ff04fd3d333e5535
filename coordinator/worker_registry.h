// The set of attached workers, as the coordinator sees them. Thread-safe.
// A worker is present from its Register message until its session stream ends.
#ifndef GEMMA_COORDINATOR_WORKER_REGISTRY_H_
#define GEMMA_COORDINATOR_WORKER_REGISTRY_H_

#include <map>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gemma/v1/cluster.pb.h"

namespace gemma {

class WorkerRegistry {
 public:
  // Adds `worker` under a fresh name "workers/w-N" and returns the name.
  std::string Attach(gemma::v1::Worker worker);
  // Records a heartbeat; false when the worker is unknown.
  bool Heartbeat(const std::string& name, int64_t now_unix);
  // Removes the worker; no-op when unknown.
  void Detach(const std::string& name);
  // All workers, ordered by name.
  std::vector<gemma::v1::Worker> List() const;
  int size() const;

 private:
  mutable absl::Mutex mu_;
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, gemma::v1::Worker> workers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gemma

#endif  // GEMMA_COORDINATOR_WORKER_REGISTRY_H_
