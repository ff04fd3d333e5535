#include "coordinator/worker_registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gemma {

std::string WorkerRegistry::Attach(gemma::v1::Worker worker) {
  absl::MutexLock lock(&mu_);
  // Zero-padded so that name order is attach order.
  std::string name = absl::StrFormat("workers/w-%05d", ++next_id_);
  worker.set_name(name);
  workers_[name] = std::move(worker);
  return name;
}

bool WorkerRegistry::Heartbeat(const std::string& name, int64_t now_unix) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(name);
  if (it == workers_.end()) return false;
  it->second.set_last_heartbeat_unix(now_unix);
  return true;
}

void WorkerRegistry::Detach(const std::string& name) {
  absl::MutexLock lock(&mu_);
  workers_.erase(name);
}

std::vector<gemma::v1::Worker> WorkerRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<gemma::v1::Worker> out;
  out.reserve(workers_.size());
  for (const auto& [name, w] : workers_) out.push_back(w);
  return out;
}

int WorkerRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(workers_.size());
}

}  // namespace gemma
