// The coordinator's state machine: jobs, attempts, workers and checkpoints,
// and the Scheduler that gang-places queued jobs. It owns no threads and no
// sockets: callers pass the time in and get back Effects (messages for
// workers, events for watchers). The server runs it inside the Scheduler
// actor (one message at a time, so a gang's reservation is atomic); each
// worker's outgoing messages go through its WorkerActor, each job's progress
// and logs through its JobActor. Not thread-safe by itself.
//
// Every public mutating call persists its transitions with one synced
// Store::Write before it returns; events carry increasing revisions.
//
// Job life: QUEUED -> STARTING (attempt created, ranks assigned) -> RUNNING
// (every rank started) -> SUCCEEDED. A failed attempt (rank error, lost
// worker, hang) -> RECOVERING (backoff) -> QUEUED, up to max_restarts, else
// FAILED. CancelJob: QUEUED/RECOVERING -> CANCELLED; STARTING/RUNNING ->
// CANCELLING -> CANCELLED when the ranks stopped.
//
// Restart: Recover() reloads the store; live attempts wait `grace` for their
// workers to re-attach with (job, attempt, epoch). Nothing is scheduled during
// the grace period, so no second attempt of a job can start; ranks that do not
// come back fail their attempt, and ranks of other epochs are aborted.
#ifndef GEMMA_COORDINATOR_CONTROL_H_
#define GEMMA_COORDINATOR_CONTROL_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/store.h"
#include "gemma/v1/checkpoints.pb.h"
#include "gemma/v1/cluster.pb.h"
#include "gemma/v1/jobs.pb.h"
#include "gemma/v1/worker_session.pb.h"

namespace gemma {

struct ControlOptions {
  // A worker with no message for this long is lost.
  absl::Duration lease = absl::Seconds(10);
  // After Recover(): how long live attempts wait for their workers.
  absl::Duration grace = absl::Seconds(15);
  absl::Duration heartbeat_interval = absl::Seconds(2);
  // Default phase timeouts when a spec leaves them at 0.
  absl::Duration default_init_timeout = absl::Seconds(600);
  absl::Duration default_step_timeout = absl::Seconds(1800);
  std::string version = "dev";
  // Training jobs (sft, peft) submitted without checkpoint.root get
  // ROOT/<job id>: one folder per job of this coordinator, so a new job
  // never resumes from another one's steps. Empty: leave the spec alone.
  std::string checkpoint_root;
};

// What a call asks the caller to do after it returns.
struct Effects {
  // (worker name, message), in order.
  std::vector<std::pair<std::string, gemma::v1::CoordinatorMessage>> sends;
  // Stored events (and live progress events, whose revision is not new).
  std::vector<gemma::v1::JobEvent> events;
};

// A typed failure record as the API reports it (rank -1: not one rank's).
gemma::v1::Failure MakeFailure(gemma::v1::FailureReason reason,
                               std::string message, int rank = -1,
                               std::string worker = "");

class ControlState {
 public:
  ControlState(Store* store, ControlOptions options);

  // Loads jobs, live attempts and counters; starts the grace period when some
  // attempt was live. Call once, before anything else.
  absl::Status Recover(absl::Time now);

  // --- JobService ---
  // INVALID_ARGUMENT (field named), ALREADY_EXISTS (job_id taken). A known
  // request_id returns the job it created.
  absl::StatusOr<gemma::v1::Job> Submit(const gemma::v1::SubmitJobRequest& req,
                                        absl::Time now, Effects* fx);
  // NOT_FOUND; FAILED_PRECONDITION when already finished.
  absl::StatusOr<gemma::v1::Job> Cancel(const std::string& name, absl::Time now,
                                        Effects* fx);
  // With its attempts (oldest first).
  absl::StatusOr<gemma::v1::Job> GetJob(const std::string& name) const;
  absl::StatusOr<gemma::v1::ListJobsResponse> ListJobs(
      const gemma::v1::ListJobsRequest& req) const;

  // --- ClusterService ---
  std::vector<gemma::v1::Worker> ListWorkers() const;
  gemma::v1::ClusterStatus Status(absl::Time now) const;

  // --- CheckpointService ---
  absl::StatusOr<gemma::v1::ListCheckpointsResponse> ListCheckpoints(
      const std::string& job) const;
  absl::StatusOr<gemma::v1::Checkpoint> GetCheckpoint(
      const std::string& name) const;
  absl::StatusOr<gemma::v1::Checkpoint> SetPinned(const std::string& name,
                                                  bool pinned);
  absl::Status DeleteCheckpoint(const std::string& name);

  // --- WorkerSession ---
  // A Register on session `session`; the first send in `fx` is the
  // Registered reply. Returns the worker's name.
  absl::StatusOr<std::string> Register(
      int64_t session, const gemma::v1::WorkerMessage::Register& reg,
      absl::Time now, Effects* fx);
  // Any later message of that session.
  void OnWorkerMessage(const std::string& worker, int64_t session,
                       const gemma::v1::WorkerMessage& msg, absl::Time now,
                       Effects* fx);
  // A rank's progress (forwarded by its JobActor): its step and metrics, and
  // proof of life for hang detection. Stale epochs are ignored.
  void OnRankProgress(const gemma::v1::WorkerMessage::Progress& p,
                      absl::Time now);
  // The session's stream ended: the worker is lost (unless it re-attached).
  void OnSessionEnded(const std::string& worker, int64_t session,
                      absl::Time now, Effects* fx);

  // Leases, hangs, backoffs, the grace period's end, and scheduling.
  void Tick(absl::Time now, Effects* fx);

  int64_t revision() const { return revision_; }
  bool in_grace(absl::Time now) const { return now < grace_until_; }
  // True when the job exists and is terminal (for streams that end with it).
  bool IsFinished(const std::string& job) const;

 private:
  struct JobEntry {
    gemma::v1::Job job;                       // without attempts
    std::optional<gemma::v1::Attempt> live;   // the attempt now running
    std::map<int, absl::Time> last_progress;  // by rank, live attempt only
  };
  struct WorkerEntry {
    gemma::v1::Worker worker;
    int64_t session = 0;
    absl::Time lease_deadline;
  };
  // What one public call writes: one batch, many events.
  struct Txn {
    Store::Batch batch;
    std::vector<gemma::v1::JobEvent> events;
    bool touched = false;
  };
  using QueueKey =
      std::tuple<int, int64_t, std::string>;  // (-priority, seq, name)

  void Commit(Txn& txn, Effects* fx);
  // The job as clients see it: waiting_reason filled in for queued jobs.
  gemma::v1::Job View(const JobEntry& e) const;
  void Emit(Txn& txn, JobEntry& e, gemma::v1::EventType type,
            const std::string& message, absl::Time now);
  void Schedule(absl::Time now, Txn& txn, Effects* fx);
  void StartAttempt(JobEntry& e, const std::vector<std::string>& workers,
                    absl::Time now, Txn& txn, Effects* fx);
  // Ends the live attempt as failed; retries by policy when `retry`.
  void FailAttempt(JobEntry& e, const gemma::v1::Failure& failure, bool retry,
                   absl::Time now, Txn& txn, Effects* fx);
  // Ends the live attempt when every rank finished.
  void MaybeFinishAttempt(JobEntry& e, absl::Time now, Txn& txn, Effects* fx);
  void WorkerLost(const std::string& worker, const std::string& why,
                  absl::Time now, Txn& txn, Effects* fx);
  // The live attempt `ref` names, with the rank's status; nullptr when stale.
  gemma::v1::RankStatus* LiveRank(const gemma::v1::RankRef& ref,
                                  JobEntry** entry);
  void FreeWorker(const std::string& worker, int64_t epoch);
  // Rank 0 opened the attempt's c10d store: record it and pass it to every
  // rank of the gang.
  void OnStoreOpened(const std::string& worker,
                     const gemma::v1::WorkerMessage::StoreOpened& m, Txn& txn,
                     Effects* fx);
  void OnStarted(const gemma::v1::RankRef& ref, absl::Time now, Txn& txn,
                 Effects* fx);
  void OnFinished(const std::string& worker,
                  const gemma::v1::WorkerMessage::RankFinished& f,
                  absl::Time now, Txn& txn, Effects* fx);
  void OnCheckpoint(const gemma::v1::WorkerMessage::CheckpointReport& c,
                    absl::Time now, Txn& txn);
  void EndGrace(absl::Time now, Txn& txn, Effects* fx);
  void SetState(JobEntry& e, gemma::v1::JobState state, absl::Time now);
  void Enqueue(JobEntry& e);
  void SendAbort(const std::string& worker, const gemma::v1::RankRef& ref,
                 const std::string& reason, Effects* fx);

  Store* store_;
  const ControlOptions options_;

  // Touched only from the owning actor.
  std::map<std::string, JobEntry> jobs_;
  std::set<QueueKey> queue_;
  std::map<std::string, WorkerEntry> workers_;  // attached workers
  std::map<std::string, std::string> request_ids_;
  int64_t revision_ = 0;
  int64_t epoch_ = 0;
  int64_t job_seq_ = 0;
  int64_t worker_seq_ = 0;
  absl::Time started_ = absl::UnixEpoch();
  absl::Time grace_until_ = absl::InfinitePast();
  bool grace_pending_ = false;
  bool dirty_ = true;  // something changed that may let a queued job run
  // The first queued job that fits the cluster but not its free workers, as
  // of the last scheduling pass; jobs after it wait behind it.
  std::optional<QueueKey> blocker_key_;
  std::string behind_reason_;
};

}  // namespace gemma

#endif  // GEMMA_COORDINATOR_CONTROL_H_
