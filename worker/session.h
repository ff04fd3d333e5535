// The worker's session with the coordinator: attach, heartbeat, and reattach
// with backoff when the stream breaks (e.g. the coordinator restarted).
#ifndef GEMMA_WORKER_SESSION_H_
#define GEMMA_WORKER_SESSION_H_

#include <atomic>
#include <string>

#include "absl/time/time.h"
#include "gemma/v1/cluster.pb.h"

namespace gemma {

struct SessionOptions {
  std::string coordinator = "127.0.0.1:7450";
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(5);
};

class WorkerSessionClient {
 public:
  WorkerSessionClient(SessionOptions options, gemma::v1::Worker self);
  // Runs until Stop(): attach, heartbeat, reattach on failure.
  void Run();
  // Asks Run() to return soon; safe from any thread or a signal waiter.
  void Stop() { stop_ = true; }

 private:
  // One attached session; returns when the stream ends or Stop() is called.
  bool RunOnce();

  SessionOptions options_;
  gemma::v1::Worker self_;
  std::atomic<bool> stop_{false};
};

}  // namespace gemma

#endif  // GEMMA_WORKER_SESSION_H_
