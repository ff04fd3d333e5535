// The worker's session with the coordinator: attach (Register with its
// resources and the rank it runs), heartbeat, run assigned ranks through
// jobs/, stream their progress, logs and checkpoint reports, and obey Cancel
// and Abort. When the stream breaks (e.g. the coordinator restarted) the rank
// keeps running; the session re-attaches with backoff under the same worker
// name, announcing (job, attempt, epoch, rank) so the coordinator can adopt
// or fence it. One rank at a time.
//
// Multi-rank attempts: rank 0's worker opens the attempt's c10d store
// (SessionOptions::open_store) and reports its address (StoreOpened); the
// coordinator sends it to every rank (Rendezvous), and each rank's job starts
// once it has it (RankContext::store_address). Cancel and Abort call the
// abort functions the job registered (RankContext::on_abort) so no rank
// stays blocked in a collective.
#ifndef GEMMA_WORKER_SESSION_H_
#define GEMMA_WORKER_SESSION_H_

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gemma/v1/worker_session.pb.h"

namespace gemma {

class JobRegistry;

// Opens the rendezvous store of a `world`-rank attempt whose rank 0 runs
// here (gemma-worker: worker/comm.h's RendezvousStore on a free port).
// Returns the store (kept alive until the rank ends) and its host:port.
struct OpenedStore {
  std::shared_ptr<void> store;
  std::string address;
};
using StoreOpener = std::function<absl::StatusOr<OpenedStore>(int world)>;

struct SessionOptions {
  std::string coordinator = "127.0.0.1:7450";
  // Needed for multi-rank attempts; without it rank 0 of one fails.
  StoreOpener open_store;
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(5);
};

class WorkerSessionClient {
 public:
  // `registry` must outlive this object.
  WorkerSessionClient(SessionOptions options, gemma::v1::Worker self,
                      const JobRegistry* registry);
  ~WorkerSessionClient();
  // Runs until Stop(): attach, heartbeat, run ranks, reattach on failure.
  void Run();
  // Asks Run() to return soon (the running rank is cancelled); safe from any
  // thread or a signal waiter.
  void Stop();

 private:
  struct RankRun;
  // One attached session; true when it got as far as Registered.
  bool RunOnce();
  void OnCoordinatorMessage(const gemma::v1::CoordinatorMessage& m);
  void StartRank(const gemma::v1::CoordinatorMessage::Assign& assign);
  void StopRank(const gemma::v1::RankRef& ref, bool abort,
                const std::string& why);
  void SetRendezvous(const gemma::v1::RankRef& ref, const std::string& address);
  // Rank 0 opens the store; every rank waits for the coordinator's address.
  absl::Status Rendezvous(RankRun* run, int world, std::string* address);
  void Enqueue(gemma::v1::WorkerMessage m);

  const SessionOptions options_;
  gemma::v1::Worker self_;
  const JobRegistry* registry_;
  std::atomic<bool> stop_{false};

  absl::Mutex mu_;
  std::string name_ ABSL_GUARDED_BY(mu_);  // kept across re-attaches
  std::shared_ptr<RankRun> rank_ ABSL_GUARDED_BY(mu_);
  std::deque<gemma::v1::WorkerMessage> outbox_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gemma

#endif  // GEMMA_WORKER_SESSION_H_
