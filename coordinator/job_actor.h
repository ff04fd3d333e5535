// JobActor: one per job with live ranks. Its ranks' progress reports and log
// lines go to it straight from their sessions instead of through the
// Scheduler actor: it drops those of attempts older than the job's newest
// epoch, keeps the log lines, publishes live progress to watchers, and
// forwards progress to the Scheduler (which runs hang detection and serves
// GetJob) at most once per `forward_interval` per rank, plus each rank's
// last step. So a chatty job costs the Scheduler a bounded message rate.
#ifndef GEMMA_COORDINATOR_JOB_ACTOR_H_
#define GEMMA_COORDINATOR_JOB_ACTOR_H_

#include <functional>
#include <map>
#include <string>

#include "absl/time/time.h"
#include "coordinator/actor.h"
#include "coordinator/hub.h"
#include "gemma/v1/worker_session.pb.h"

namespace gemma {

class JobActor {
 public:
  using Forward =
      std::function<void(const gemma::v1::WorkerMessage::Progress&)>;

  // `hub` and `logs` must outlive the actor; `forward` must not block.
  JobActor(ThreadPool* pool, std::string job, EventHub* hub, LogStore* logs,
           Forward forward,
           absl::Duration forward_interval = absl::Milliseconds(100));
  // Runs what is queued first.
  ~JobActor() { actor_.Drain(); }

  // All asynchronous.
  void OnProgress(gemma::v1::WorkerMessage::Progress p);
  void OnLog(gemma::v1::RankRef ref, std::string text);
  // The Scheduler started an attempt with this epoch: older ones are stale.
  void OnEpoch(int64_t epoch);
  // Blocks until everything sent so far was handled (its logs appended, its
  // progress forwarded): messages sent to the Scheduler after Flush() come
  // after them.
  void Flush() { actor_.Drain(); }

 private:
  bool Stale(const gemma::v1::RankRef& ref) const {
    return ref.epoch() < newest_epoch_;
  }

  const std::string job_;
  EventHub* const hub_;
  LogStore* const logs_;
  const Forward forward_;
  const absl::Duration forward_interval_;
  // Touched only on actor_.
  int64_t newest_epoch_ = 0;
  std::map<int, absl::Time> last_forward_;  // by rank
  Actor actor_;                             // last: destroyed (drained) first
};

}  // namespace gemma

#endif  // GEMMA_COORDINATOR_JOB_ACTOR_H_
