#include "coordinator/worker_actor.h"

namespace gemma {

void WorkerActor::Send(gemma::v1::CoordinatorMessage msg) {
  absl::MutexLock lock(&mu_);
  if (closing_) return;
  // Close() drains the mailbox before the object can go, so `this` is valid.
  actor_.Send([this, m = std::move(msg)] {
    if (!failed_ && !stream_->Write(m)) failed_ = true;
  });
}

void WorkerActor::Close() {
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
  }
  actor_.Drain();
}

}  // namespace gemma
