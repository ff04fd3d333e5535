#include "worker/session.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <thread>

#include "absl/synchronization/notification.h"
#include "common/log.h"
#include "gemma/v1/worker_session.grpc.pb.h"

namespace gemma {

namespace v1 = ::gemma::v1;

WorkerSessionClient::WorkerSessionClient(SessionOptions options, v1::Worker self)
    : options_(std::move(options)), self_(std::move(self)) {}

void WorkerSessionClient::Run() {
  absl::Duration backoff = options_.initial_backoff;
  while (!stop_) {
    const bool was_attached = RunOnce();
    if (stop_) break;
    if (was_attached) backoff = options_.initial_backoff;
    GEMMA_LOG(WARNING) << "session with " << options_.coordinator
                       << " ended; retrying in " << absl::FormatDuration(backoff);
    const absl::Time until = absl::Now() + backoff;
    while (!stop_ && absl::Now() < until) absl::SleepFor(absl::Milliseconds(50));
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

bool WorkerSessionClient::RunOnce() {
  auto channel = grpc::CreateChannel(options_.coordinator, grpc::InsecureChannelCredentials());
  auto stub = v1::WorkerSession::NewStub(channel);
  grpc::ClientContext ctx;
  auto stream = stub->Attach(&ctx);
  v1::WorkerMessage reg;
  *reg.mutable_register_()->mutable_worker() = self_;
  if (!stream->Write(reg)) return false;
  v1::CoordinatorMessage reply;
  if (!stream->Read(&reply) || !reply.has_registered()) {
    stream->Finish();
    return false;
  }
  const std::string name = reply.registered().worker_name();
  const absl::Duration interval =
      absl::Milliseconds(std::max(50, reply.registered().heartbeat_interval_ms()));
  GEMMA_LOG(INFO) << "attached to " << options_.coordinator << " as " << name;

  // Reader: drains coordinator messages; its end means the session is over.
  absl::Notification ended;
  std::thread reader([&] {
    v1::CoordinatorMessage m;
    while (stream->Read(&m)) {
    }
    ended.Notify();
  });
  while (!stop_ && !ended.HasBeenNotified()) {
    v1::WorkerMessage hb;
    hb.mutable_heartbeat();
    if (!stream->Write(hb)) break;
    ended.WaitForNotificationWithTimeout(interval);
  }
  stream->WritesDone();
  ctx.TryCancel();
  reader.join();
  stream->Finish();
  return true;
}

}  // namespace gemma
