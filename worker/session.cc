#include "worker/session.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <exception>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/log.h"
#include "gemma/v1/worker_session.grpc.pb.h"
#include "jobs/registry.h"

namespace gemma {

namespace v1 = ::gemma::v1;

struct WorkerSessionClient::RankRun {
  v1::RankRef ref;
  std::atomic<bool> stop{false};
  std::thread thread;
  // Set when Run() returned (guarded by the session's mu_).
  bool finished = false;
  bool ok = false;
  bool cancelled = false;
  std::string error;
  // The attempt's store address from the coordinator (guarded by mu_).
  std::string store_address;
  // Abort functions the job registered (guarded by mu_).
  std::vector<std::function<void()>> aborts;
  // Rank 0: the store this worker serves; used by the rank thread only.
  std::shared_ptr<void> store;
};

WorkerSessionClient::WorkerSessionClient(SessionOptions options,
                                         v1::Worker self,
                                         const JobRegistry* registry)
    : options_(std::move(options)),
      self_(std::move(self)),
      registry_(registry) {}

WorkerSessionClient::~WorkerSessionClient() {
  Stop();
  std::shared_ptr<RankRun> r;
  {
    absl::MutexLock lock(&mu_);
    r = rank_;
  }
  if (r && r->thread.joinable()) r->thread.join();
}

void WorkerSessionClient::Stop() {
  stop_ = true;
  absl::MutexLock lock(&mu_);
  if (rank_) rank_->stop = true;
}

void WorkerSessionClient::Enqueue(v1::WorkerMessage m) {
  absl::MutexLock lock(&mu_);
  outbox_.push_back(std::move(m));
  // Bounded while detached: progress and logs may be dropped, never the
  // final state (Register carries it).
  while (outbox_.size() > 10000) outbox_.pop_front();
}

void WorkerSessionClient::Run() {
  absl::Duration backoff = options_.initial_backoff;
  while (!stop_) {
    const bool was_attached = RunOnce();
    if (stop_) break;
    if (was_attached) backoff = options_.initial_backoff;
    GEMMA_LOG(WARNING) << "session with " << options_.coordinator
                       << " ended; retrying in "
                       << absl::FormatDuration(backoff);
    const absl::Time until = absl::Now() + backoff;
    while (!stop_ && absl::Now() < until)
      absl::SleepFor(absl::Milliseconds(50));
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
  std::shared_ptr<RankRun> r;
  {
    absl::MutexLock lock(&mu_);
    r = rank_;
  }
  if (r && r->thread.joinable()) r->thread.join();
}

bool WorkerSessionClient::RunOnce() {
  auto channel = grpc::CreateChannel(options_.coordinator,
                                     grpc::InsecureChannelCredentials());
  auto stub = v1::WorkerSession::NewStub(channel);
  grpc::ClientContext ctx;
  auto stream = stub->Attach(&ctx);
  v1::WorkerMessage reg;
  {
    absl::MutexLock lock(&mu_);
    auto* r = reg.mutable_register_();
    *r->mutable_worker() = self_;
    r->mutable_worker()->set_name(name_);
    if (rank_) {
      *r->mutable_running() = rank_->ref;
      r->set_running_finished(rank_->finished);
      r->set_running_ok(rank_->ok);
      r->set_running_error(rank_->error);
      r->set_running_cancelled(rank_->cancelled);
    }
    // Register carries the final state; older queued messages are stale.
    outbox_.clear();
  }
  if (!stream->Write(reg)) {
    stream->Finish();
    return false;
  }
  v1::CoordinatorMessage reply;
  if (!stream->Read(&reply) || !reply.has_registered()) {
    ctx.TryCancel();
    grpc::Status st = stream->Finish();
    if (!st.ok() && st.error_code() != grpc::StatusCode::UNAVAILABLE) {
      GEMMA_LOG(WARNING) << "register refused: " << st.error_message();
    }
    return false;
  }
  const absl::Duration interval = absl::Milliseconds(
      std::max(20, reply.registered().heartbeat_interval_ms()));
  {
    absl::MutexLock lock(&mu_);
    name_ = reply.registered().worker_name();
    GEMMA_LOG(INFO) << "attached to " << options_.coordinator << " as "
                    << name_;
  }

  // Reader: handles coordinator messages; its end means the session is over.
  absl::Notification ended;
  std::thread reader([&] {
    v1::CoordinatorMessage m;
    while (stream->Read(&m)) OnCoordinatorMessage(m);
    ended.Notify();
  });
  absl::Time next_heartbeat = absl::Now();
  bool ok = true;
  while (ok && !stop_ && !ended.HasBeenNotified()) {
    std::deque<v1::WorkerMessage> batch;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithDeadline(
          absl::Condition(
              +[](std::deque<v1::WorkerMessage>* q) { return !q->empty(); },
              &outbox_),
          std::min(next_heartbeat, absl::Now() + absl::Milliseconds(100)));
      batch.swap(outbox_);
    }
    for (auto& m : batch) {
      if (!stream->Write(m)) {
        ok = false;
        break;
      }
    }
    if (ok && absl::Now() >= next_heartbeat) {
      v1::WorkerMessage hb;
      hb.mutable_heartbeat();
      ok = stream->Write(hb);
      next_heartbeat = absl::Now() + interval;
    }
  }
  stream->WritesDone();
  ctx.TryCancel();
  reader.join();
  stream->Finish();
  return true;
}

void WorkerSessionClient::OnCoordinatorMessage(
    const v1::CoordinatorMessage& m) {
  switch (m.kind_case()) {
    case v1::CoordinatorMessage::kAssign:
      StartRank(m.assign());
      break;
    case v1::CoordinatorMessage::kCancel:
      StopRank(m.cancel().rank(), false, "cancelled");
      break;
    case v1::CoordinatorMessage::kAbort:
      StopRank(m.abort().rank(), true, m.abort().reason());
      break;
    case v1::CoordinatorMessage::kRendezvous:
      SetRendezvous(m.rendezvous().rank(), m.rendezvous().store_address());
      break;
    default:
      break;
  }
}

void WorkerSessionClient::StopRank(const v1::RankRef& ref, bool abort,
                                   const std::string& why) {
  std::vector<std::function<void()>> aborts;
  {
    absl::MutexLock lock(&mu_);
    if (!rank_ || rank_->ref.epoch() != ref.epoch() ||
        rank_->ref.job() != ref.job())
      return;
    GEMMA_LOG(INFO) << (abort ? "abort " : "cancel ") << ref.job()
                    << " attempt " << ref.attempt() << " rank " << ref.rank()
                    << ": " << why;
    rank_->stop = true;
    aborts = rank_->aborts;
  }
  // Peers may have stopped already: leave no collective waiting for them.
  for (const auto& f : aborts) f();
}

void WorkerSessionClient::SetRendezvous(const v1::RankRef& ref,
                                        const std::string& address) {
  absl::MutexLock lock(&mu_);
  if (!rank_ || rank_->ref.epoch() != ref.epoch() ||
      rank_->ref.job() != ref.job())
    return;
  rank_->store_address = address;
}

absl::Status WorkerSessionClient::Rendezvous(RankRun* run, int world,
                                             std::string* address) {
  if (run->ref.rank() == 0) {
    if (!options_.open_store) {
      return absl::FailedPreconditionError(
          "this worker cannot open a rendezvous store (no opener)");
    }
    absl::StatusOr<OpenedStore> opened = options_.open_store(world);
    if (!opened.ok()) return opened.status();
    run->store = opened->store;
    v1::WorkerMessage m;
    *m.mutable_store_opened()->mutable_rank() = run->ref;
    m.mutable_store_opened()->set_store_address(opened->address);
    Enqueue(std::move(m));
    GEMMA_LOG(INFO) << run->ref.job() << " attempt " << run->ref.attempt()
                    << ": rendezvous store on " << opened->address;
  }
  // Every rank (rank 0 too) takes the address the coordinator hands out; the
  // coordinator's init timeout covers a rank 0 that never reports.
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](RankRun* r) { return r->stop.load() || !r->store_address.empty(); },
      run));
  if (run->store_address.empty()) {
    return absl::CancelledError("stopped before the rendezvous");
  }
  *address = run->store_address;
  return absl::OkStatus();
}

void WorkerSessionClient::StartRank(
    const v1::CoordinatorMessage::Assign& assign) {
  std::shared_ptr<RankRun> old;
  {
    absl::MutexLock lock(&mu_);
    old = rank_;
  }
  if (old) {
    std::vector<std::function<void()>> aborts;
    {
      absl::MutexLock lock(&mu_);  // wakes a rank waiting for its rendezvous
      old->stop = true;  // a new assignment supersedes whatever ran before
      aborts = old->aborts;
    }
    for (const auto& f : aborts) f();
    if (old->thread.joinable()) old->thread.join();
  }
  auto run = std::make_shared<RankRun>();
  run->ref = assign.rank();
  const v1::RankRef ref = assign.rank();
  GEMMA_LOG(INFO) << "assigned " << ref.job() << " attempt " << ref.attempt()
                  << " rank " << ref.rank() << "/" << assign.world()
                  << " (epoch " << ref.epoch() << ")";
  RankContext ctx;
  ctx.spec = assign.spec();
  ctx.job = ref.job();
  ctx.attempt = ref.attempt();
  ctx.rank = ref.rank();
  ctx.world = assign.world();
  ctx.device = self_.device_kind() == "cuda"
                   ? absl::StrCat("cuda:", self_.device_index())
                   : "cpu";
  ctx.progress = [this, ref](int64_t step, int64_t total,
                             const std::map<std::string, double>& metrics) {
    v1::WorkerMessage m;
    auto* p = m.mutable_progress();
    *p->mutable_rank() = ref;
    p->set_step(step);
    p->set_total_steps(total);
    for (const auto& [k, v] : metrics) (*p->mutable_metrics())[k] = v;
    Enqueue(std::move(m));
  };
  ctx.log = [this, ref](const std::string& line) {
    v1::WorkerMessage m;
    *m.mutable_log()->mutable_rank() = ref;
    m.mutable_log()->set_text(line);
    Enqueue(std::move(m));
  };
  ctx.checkpoint = [this, ref](int64_t step, const std::string& path,
                               int64_t bytes,
                               const std::map<std::string, double>& metrics) {
    v1::WorkerMessage m;
    auto* c = m.mutable_checkpoint();
    *c->mutable_rank() = ref;
    c->set_step(step);
    c->set_path(path);
    c->set_bytes(bytes);
    for (const auto& [k, v] : metrics) (*c->mutable_metrics())[k] = v;
    Enqueue(std::move(m));
  };
  RankRun* raw = run.get();
  ctx.cancelled = [raw] { return raw->stop.load(); };
  ctx.on_abort = [this, raw](std::function<void()> f) {
    bool stopped = false;
    {
      absl::MutexLock lock(&mu_);
      raw->aborts.push_back(f);
      stopped = raw->stop.load();
    }
    if (stopped) f();
  };
  {
    absl::MutexLock lock(&mu_);
    rank_ = run;
  }
  run->thread = std::thread([this, raw, ctx = std::move(ctx)]() mutable {
    absl::Status st;
    bool unimplemented = false;
    auto job = registry_->Create(ctx.spec.kind());
    if (!job.ok()) {
      st = job.status();
      unimplemented = absl::IsUnimplemented(st);
    } else if (ctx.world > 1 &&
               !(st = Rendezvous(raw, ctx.world, &ctx.store_address)).ok()) {
      // reported below
    } else {
      v1::WorkerMessage started;
      *started.mutable_started()->mutable_rank() = raw->ref;
      Enqueue(std::move(started));
      // Anything a job lets escape (e.g. gloo::IoException, a
      // std::runtime_error, when a peer rank's connection closes mid
      // collective) fails this rank instead of terminating the worker.
      try {
        st = (*job)->Run(ctx);
      } catch (const std::exception& e) {
        st = absl::InternalError(
            absl::StrCat(ctx.job, " rank ", ctx.rank, ": ", e.what()));
      }
    }
    raw->store.reset();  // rank 0: close the store with the rank
    if (!st.ok())
      ctx.Log(absl::StrCat("rank ", ctx.rank, " ended: ", st.ToString()));
    GEMMA_LOG(INFO) << ctx.job << " rank " << ctx.rank << " ended: " << st;
    v1::WorkerMessage fin;
    auto* f = fin.mutable_finished();
    *f->mutable_rank() = raw->ref;
    f->set_ok(st.ok());
    f->set_cancelled(absl::IsCancelled(st));
    f->set_unimplemented(unimplemented);
    f->set_error(std::string(st.message()));
    {
      absl::MutexLock lock(&mu_);
      raw->aborts.clear();  // they hold the job's communicators
      raw->finished = true;
      raw->ok = st.ok();
      raw->cancelled = absl::IsCancelled(st);
      raw->error = std::string(st.message());
    }
    Enqueue(std::move(fin));
  });
}

}  // namespace gemma
