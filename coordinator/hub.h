// Fan-out for the coordinator's server streams. EventHub wakes watchers when
// new events are stored and keeps the latest live progress events (which are
// not stored); LogStore keeps each job's recent log lines (bounded per job),
// in memory and, given a Store, in its kLogs table so they survive a
// coordinator restart. Thread-safe.
#ifndef GEMMA_COORDINATOR_HUB_H_
#define GEMMA_COORDINATOR_HUB_H_

#include <deque>
#include <map>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gemma/v1/jobs.pb.h"

namespace gemma {

class Store;

class EventHub {
 public:
  // Stored events raise the revision; progress events join the ring.
  void Publish(const std::vector<gemma::v1::JobEvent>& events);
  int64_t revision() const;
  // Starts the revision at the store's (after a restart).
  void SetRevision(int64_t revision);
  int64_t progress_seq() const;
  // Progress events after `seq` (oldest first); sets *seq to the newest.
  std::vector<gemma::v1::JobEvent> ProgressSince(int64_t* seq) const;
  // Returns when the revision passes `revision`, the progress sequence passes
  // `progress_seq`, or `timeout` elapses.
  void Wait(int64_t revision, int64_t progress_seq,
            absl::Duration timeout) const;

 private:
  mutable absl::Mutex mu_;
  int64_t revision_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t progress_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<std::pair<int64_t, gemma::v1::JobEvent>> progress_
      ABSL_GUARDED_BY(mu_);
};

class LogStore {
 public:
  // With `store`, lines are also written there (unsynced) and a job's lines
  // are read back from it the first time the job is touched after a restart.
  explicit LogStore(Store* store = nullptr, size_t max_lines_per_job = 5000)
      : store_(store), max_lines_(max_lines_per_job) {}
  void Append(const std::string& job, int attempt, int rank,
              const std::string& text);
  // Lines of `job` with seq > after_seq and (rank < 0 or its rank).
  std::vector<gemma::v1::LogLine> Read(const std::string& job,
                                       int64_t after_seq, int rank) const;
  // Returns when `job` has a line after `after_seq` or `timeout` elapses.
  void Wait(const std::string& job, int64_t after_seq,
            absl::Duration timeout) const;

 private:
  struct JobLogs {
    int64_t seq = 0;
    std::deque<gemma::v1::LogLine> lines;
  };
  // The job's entry, loaded from the store when not in memory yet.
  JobLogs& Load(const std::string& job) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Store* const store_;
  const size_t max_lines_;
  mutable absl::Mutex mu_;
  mutable std::map<std::string, JobLogs> logs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gemma

#endif  // GEMMA_COORDINATOR_HUB_H_
