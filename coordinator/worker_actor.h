// WorkerActor: the coordinator's end of one worker's session stream. Its
// mailbox serializes the messages sent to that worker (assignments, cancel,
// abort) so the Scheduler actor never blocks on a slow worker's socket.
// Created when a session registers; Close() ends it before the stream goes.
#ifndef GEMMA_COORDINATOR_WORKER_ACTOR_H_
#define GEMMA_COORDINATOR_WORKER_ACTOR_H_

#include <grpcpp/support/sync_stream.h>

#include <cstdint>
#include <memory>

#include "absl/synchronization/mutex.h"
#include "coordinator/actor.h"
#include "gemma/v1/worker_session.pb.h"

namespace gemma {

class WorkerActor {
 public:
  using Stream = grpc::ServerReaderWriter<gemma::v1::CoordinatorMessage,
                                          gemma::v1::WorkerMessage>;

  // `stream` must stay valid until Close() returns.
  WorkerActor(ThreadPool* pool, Stream* stream, int64_t session_id)
      : actor_(pool), stream_(stream), session_id_(session_id) {}
  ~WorkerActor() { Close(); }

  // Queues `msg` for the worker; dropped once the stream failed or closed.
  void Send(gemma::v1::CoordinatorMessage msg);
  // Stops writing and waits for queued writes to finish; after it returns no
  // write touches the stream. Idempotent.
  void Close();
  int64_t session_id() const { return session_id_; }

 private:
  absl::Mutex mu_;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;  // no new writes are queued
  Actor actor_;
  Stream* stream_;       // touched only on actor_
  bool failed_ = false;  // a write failed; touched only on actor_
  const int64_t session_id_;
};

}  // namespace gemma

#endif  // GEMMA_COORDINATOR_WORKER_ACTOR_H_
