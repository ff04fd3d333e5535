#include "coordinator/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "coordinator/actor.h"
#include "coordinator/control.h"
#include "coordinator/hub.h"
#include "coordinator/job_actor.h"
#include "coordinator/store.h"
#include "coordinator/worker_actor.h"
#include "gemma/v1/checkpoints.grpc.pb.h"
#include "gemma/v1/cluster.grpc.pb.h"
#include "gemma/v1/jobs.grpc.pb.h"
#include "gemma/v1/worker_session.grpc.pb.h"
#include "proto/spec_check.h"

namespace gemma {

namespace v1 = ::gemma::v1;

namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()),
                      std::string(s.message()));
}

// A unary call's answer: `r`'s value into *resp, or its error mapped one to
// one.
template <typename T>
grpc::Status Reply(absl::StatusOr<T> r, T* resp) {
  if (!r.ok()) return ToGrpc(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status CheckJobName(const std::string& field, const std::string& name) {
  if (name.rfind("jobs/", 0) != 0 || name.size() <= 5) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat(field, ": '", name, "' is not jobs/{job}"));
  }
  return grpc::Status::OK;
}

using SessionStream = WorkerActor::Stream;

}  // namespace

class CoordinatorServer::Impl final : public v1::JobService::Service,
                                      public v1::ClusterService::Service,
                                      public v1::CheckpointService::Service,
                                      public v1::WorkerSession::Service {
 public:
  Impl(std::unique_ptr<Store> store, const CoordinatorOptions& o,
       ControlOptions co)
      : store_(std::move(store)),
        control_(store_.get(), std::move(co)),
        pool_(4),
        actor_(&pool_),
        logs_(store_.get()),
        options_(o) {}

  ~Impl() override { actor_.Drain(); }

  absl::Status Recover() {
    auto f = actor_.Ask([this] { return control_.Recover(absl::Now()); });
    absl::Status s = f.get();
    hub_.SetRevision(actor_.Ask([this] { return control_.revision(); }).get());
    return s;
  }

  void Tick() {
    // One tick in the mailbox at a time, however slow the actor is.
    if (tick_pending_.exchange(true)) return;
    actor_.Send([this] {
      tick_pending_ = false;
      Effects fx;
      control_.Tick(absl::Now(), &fx);
      Dispatch(fx);
    });
  }

  // Runs on the control actor: delivers sends and wakes watchers.
  void Dispatch(Effects& fx) {
    for (auto& [worker, msg] : fx.sends) {
      std::shared_ptr<WorkerActor> s;
      {
        absl::MutexLock lock(&sessions_mu_);
        auto it = sessions_.find(worker);
        if (it != sessions_.end()) s = it->second;
      }
      if (s) s->Send(std::move(msg));
    }
    for (const auto& ev : fx.events) {
      if (ev.job().current_epoch() > 0)
        JobActorFor(ev.job().name())->OnEpoch(ev.job().current_epoch());
    }
    hub_.Publish(fx.events);
  }

  // The job's JobActor, created on first use. Kept for the coordinator's
  // life (a few hundred bytes per job), so no message races its teardown.
  std::shared_ptr<JobActor> JobActorFor(const std::string& job) {
    absl::MutexLock lock(&job_actors_mu_);
    auto& a = job_actors_[job];
    if (!a) {
      a = std::make_shared<JobActor>(
          &pool_, job, &hub_, &logs_,
          [this](const v1::WorkerMessage::Progress& p) {
            actor_.Send([this, p] { control_.OnRankProgress(p, absl::Now()); });
          });
    }
    return a;
  }

  // ---- JobService ----
  grpc::Status SubmitJob(grpc::ServerContext*, const v1::SubmitJobRequest* req,
                         v1::Job* resp) override {
    return Reply(actor_
                     .Ask([&] {
                       Effects fx;
                       auto j = control_.Submit(*req, absl::Now(), &fx);
                       Dispatch(fx);
                       return j;
                     })
                     .get(),
                 resp);
  }

  grpc::Status GetJob(grpc::ServerContext*, const v1::GetJobRequest* req,
                      v1::Job* resp) override {
    if (auto s = CheckJobName("name", req->name()); !s.ok()) return s;
    return Reply(actor_.Ask([&] { return control_.GetJob(req->name()); }).get(),
                 resp);
  }

  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest* req,
                        v1::ListJobsResponse* resp) override {
    return Reply(actor_.Ask([&] { return control_.ListJobs(*req); }).get(),
                 resp);
  }

  grpc::Status CancelJob(grpc::ServerContext*, const v1::CancelJobRequest* req,
                         v1::Job* resp) override {
    if (auto s = CheckJobName("name", req->name()); !s.ok()) return s;
    return Reply(actor_
                     .Ask([&] {
                       Effects fx;
                       auto j = control_.Cancel(req->name(), absl::Now(), &fx);
                       Dispatch(fx);
                       return j;
                     })
                     .get(),
                 resp);
  }

  // Replays stored events after `after`, then follows; ends when `job`
  // (if set) is finished and its last event was sent.
  grpc::Status Watch(grpc::ServerContext* ctx, const std::string& job,
                     int64_t after, bool progress,
                     grpc::ServerWriter<v1::JobEvent>* w) {
    int64_t pseq = hub_.progress_seq();
    int64_t last = after;
    while (!ctx->IsCancelled()) {
      bool done = false;
      bool write_failed = false;
      absl::Status s =
          store_->Scan(Table::kEvents, "", RevisionKey(last + 1),
                       [&](const std::string& k, const std::string& v) {
                         v1::JobEvent ev;
                         if (!ev.ParseFromString(v)) return true;
                         last = RevisionFromKey(k);
                         if (!job.empty() && ev.job().name() != job)
                           return true;
                         if (!w->Write(ev)) {
                           write_failed = true;
                           return false;
                         }
                         if (!job.empty() && IsTerminal(ev.job().state()))
                           done = true;
                         return !done;
                       });
      if (!s.ok()) return ToGrpc(s);
      if (write_failed)
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      if (done) return grpc::Status::OK;
      if (!job.empty()) {
        const bool finished =
            actor_.Ask([&] { return control_.IsFinished(job); }).get();
        // Finished before `after`: nothing more will come.
        if (finished && last >= hub_.revision()) return grpc::Status::OK;
      }
      if (progress) {
        for (const auto& ev : hub_.ProgressSince(&pseq)) {
          if (!job.empty() && ev.job().name() != job) continue;
          if (!w->Write(ev))
            return grpc::Status(grpc::StatusCode::CANCELLED,
                                "client went away");
        }
      }
      hub_.Wait(last, progress ? pseq : INT64_MAX, absl::Milliseconds(500));
    }
    return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  }

  grpc::Status WatchJob(grpc::ServerContext* ctx,
                        const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* w) override {
    if (auto s = CheckJobName("name", req->name()); !s.ok()) return s;
    if (req->after_revision() < 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "after_revision: must be >= 0");
    }
    auto r = actor_.Ask([&] { return control_.GetJob(req->name()); }).get();
    if (!r.ok()) return ToGrpc(r.status());
    return Watch(ctx, req->name(), req->after_revision(),
                 req->include_progress(), w);
  }

  grpc::Status WatchJobs(grpc::ServerContext* ctx,
                         const v1::WatchJobsRequest* req,
                         grpc::ServerWriter<v1::JobEvent>* w) override {
    if (req->after_revision() < 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "after_revision: must be >= 0");
    }
    return Watch(ctx, "", req->after_revision(), req->include_progress(), w);
  }

  grpc::Status StreamLogs(grpc::ServerContext* ctx,
                          const v1::StreamLogsRequest* req,
                          grpc::ServerWriter<v1::LogLine>* w) override {
    if (auto s = CheckJobName("name", req->name()); !s.ok()) return s;
    auto r = actor_.Ask([&] { return control_.GetJob(req->name()); }).get();
    if (!r.ok()) return ToGrpc(r.status());
    int64_t seq = req->after_seq();
    while (!ctx->IsCancelled()) {
      const bool finished =
          actor_.Ask([&] { return control_.IsFinished(req->name()); }).get();
      // Lines sent before the ranks finished may still be in the JobActor.
      if (finished) JobActorFor(req->name())->Flush();
      for (const auto& line : logs_.Read(req->name(), seq, req->rank())) {
        if (!w->Write(line))
          return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
        seq = line.seq();
      }
      if (!req->follow() || finished) return grpc::Status::OK;
      logs_.Wait(req->name(), seq, absl::Milliseconds(300));
    }
    return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  }

  // ---- ClusterService ----
  grpc::Status ListWorkers(grpc::ServerContext*, const v1::ListWorkersRequest*,
                           v1::ListWorkersResponse* resp) override {
    auto all = actor_.Ask([&] { return control_.ListWorkers(); }).get();
    for (auto& w : all) *resp->add_workers() = std::move(w);
    return grpc::Status::OK;
  }

  grpc::Status GetClusterStatus(grpc::ServerContext*,
                                const v1::GetClusterStatusRequest*,
                                v1::ClusterStatus* resp) override {
    *resp = actor_.Ask([&] { return control_.Status(absl::Now()); }).get();
    return grpc::Status::OK;
  }

  grpc::Status WatchCluster(grpc::ServerContext* ctx,
                            const v1::WatchClusterRequest*,
                            grpc::ServerWriter<v1::ClusterStatus>* w) override {
    std::string last;
    while (!ctx->IsCancelled()) {
      v1::ClusterStatus s =
          actor_.Ask([&] { return control_.Status(absl::Now()); }).get();
      v1::ClusterStatus cmp = s;
      cmp.clear_uptime_seconds();
      const std::string now = cmp.SerializeAsString();
      if (now != last) {
        if (!w->Write(s)) break;
        last = now;
      }
      hub_.Wait(s.revision(), INT64_MAX, absl::Milliseconds(250));
    }
    return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  }

  // ---- CheckpointService ----
  grpc::Status ListCheckpoints(grpc::ServerContext*,
                               const v1::ListCheckpointsRequest* req,
                               v1::ListCheckpointsResponse* resp) override {
    return Reply(
        actor_.Ask([&] { return control_.ListCheckpoints(req->job()); }).get(),
        resp);
  }
  grpc::Status GetCheckpoint(grpc::ServerContext*,
                             const v1::GetCheckpointRequest* req,
                             v1::Checkpoint* resp) override {
    return Reply(
        actor_.Ask([&] { return control_.GetCheckpoint(req->name()); }).get(),
        resp);
  }
  grpc::Status PinCheckpoint(grpc::ServerContext*,
                             const v1::PinCheckpointRequest* req,
                             v1::Checkpoint* resp) override {
    return Reply(
        actor_.Ask([&] { return control_.SetPinned(req->name(), true); }).get(),
        resp);
  }
  grpc::Status UnpinCheckpoint(grpc::ServerContext*,
                               const v1::UnpinCheckpointRequest* req,
                               v1::Checkpoint* resp) override {
    return Reply(
        actor_.Ask([&] { return control_.SetPinned(req->name(), false); })
            .get(),
        resp);
  }
  grpc::Status DeleteCheckpoint(grpc::ServerContext*,
                                const v1::DeleteCheckpointRequest* req,
                                v1::DeleteCheckpointResponse*) override {
    return ToGrpc(
        actor_.Ask([&] { return control_.DeleteCheckpoint(req->name()); })
            .get());
  }

  // ---- WorkerSession ----
  grpc::Status Attach(grpc::ServerContext* ctx,
                      SessionStream* stream) override {
    v1::WorkerMessage msg;
    if (!stream->Read(&msg)) return grpc::Status::OK;
    if (!msg.has_register_()) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "the first message of a session must be Register");
    }
    auto session = std::make_shared<WorkerActor>(
        &pool_, stream, next_session_.fetch_add(1) + 1);
    auto name = actor_
                    .Ask([&]() -> absl::StatusOr<std::string> {
                      Effects fx;
                      auto n =
                          control_.Register(session->session_id(),
                                            msg.register_(), absl::Now(), &fx);
                      if (n.ok()) {
                        absl::MutexLock lock(&sessions_mu_);
                        sessions_[*n] = session;
                      }
                      Dispatch(fx);
                      return n;
                    })
                    .get();
    if (!name.ok()) return ToGrpc(name.status());
    GEMMA_LOG(INFO) << "worker attached: " << *name << " from " << ctx->peer();
    while (stream->Read(&msg)) {
      if (msg.has_register_()) {
        End(session, *name);
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            "worker sent Register twice on one session");
      }
      // Progress and logs go to the job's actor, the rest to the Scheduler.
      // (A job name that is not jobs/{job} is ignored.)
      if ((msg.has_log() && msg.log().rank().job().rfind("jobs/", 0) != 0) ||
          (msg.has_progress() &&
           msg.progress().rank().job().rfind("jobs/", 0) != 0)) {
        continue;
      }
      if (msg.has_log()) {
        JobActorFor(msg.log().rank().job())
            ->OnLog(std::move(*msg.mutable_log()->mutable_rank()),
                    std::move(*msg.mutable_log()->mutable_text()));
        continue;
      }
      if (msg.has_progress()) {
        JobActorFor(msg.progress().rank().job())
            ->OnProgress(std::move(*msg.mutable_progress()));
        continue;
      }
      if (msg.has_finished()) {
        // The rank's last progress and logs reach the Scheduler first.
        JobActorFor(msg.finished().rank().job())->Flush();
      }
      actor_.Send(
          [this, n = *name, id = session->session_id(), m = std::move(msg)] {
            Effects fx;
            control_.OnWorkerMessage(n, id, m, absl::Now(), &fx);
            Dispatch(fx);
          });
      msg = v1::WorkerMessage();
    }
    End(session, *name);
    GEMMA_LOG(INFO) << "worker detached: " << *name;
    return grpc::Status::OK;
  }

  // The session's stream is over: tell the state machine, stop writing.
  void End(const std::shared_ptr<WorkerActor>& session,
           const std::string& name) {
    actor_
        .Ask([&] {
          Effects fx;
          control_.OnSessionEnded(name, session->session_id(), absl::Now(),
                                  &fx);
          {
            absl::MutexLock lock(&sessions_mu_);
            auto it = sessions_.find(name);
            if (it != sessions_.end() && it->second == session)
              sessions_.erase(it);
          }
          Dispatch(fx);
        })
        .get();
    session->Close();
  }

 private:
  std::unique_ptr<Store> store_;
  ControlState control_;  // touched only on actor_
  ThreadPool pool_;
  Actor actor_;  // the Scheduler actor: owns control_
  EventHub hub_;
  LogStore logs_;
  CoordinatorOptions options_;
  std::atomic<int64_t> next_session_{0};
  std::atomic<bool> tick_pending_{false};
  absl::Mutex job_actors_mu_;
  std::map<std::string, std::shared_ptr<JobActor>> job_actors_
      ABSL_GUARDED_BY(job_actors_mu_);
  absl::Mutex sessions_mu_;
  std::map<std::string, std::shared_ptr<WorkerActor>> sessions_
      ABSL_GUARDED_BY(sessions_mu_);
};

CoordinatorServer::CoordinatorServer(CoordinatorOptions options)
    : options_(std::move(options)) {}

CoordinatorServer::~CoordinatorServer() {
  Shutdown();
  if (ticker_.joinable()) ticker_.join();
}

absl::Status CoordinatorServer::Start() {
  auto store = Store::Open(options_.data_dir);
  if (!store.ok()) return store.status();
  ControlOptions co;
  co.heartbeat_interval = options_.heartbeat_interval;
  co.lease = options_.lease > absl::ZeroDuration()
                 ? options_.lease
                 : options_.heartbeat_interval * 5;
  co.grace = options_.grace;
  co.version = GEMMA_VERSION;
  // Workers resolve it, in their own working folders: make it absolute.
  co.checkpoint_root =
      std::filesystem::absolute(options_.checkpoint_root.empty()
                                    ? options_.data_dir + "/checkpoints"
                                    : options_.checkpoint_root)
          .lexically_normal()
          .string();
  impl_ = std::make_unique<Impl>(std::move(*store), options_, co);
  if (absl::Status s = impl_->Recover(); !s.ok()) return s;

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC turns SO_REUSEPORT on by default, which lets a second coordinator
  // share our port silently; one coordinator per address.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  builder.AddListeningPort(options_.listen, grpc::InsecureServerCredentials(),
                           &port_);
  builder.RegisterService(static_cast<v1::JobService::Service*>(impl_.get()));
  builder.RegisterService(
      static_cast<v1::ClusterService::Service*>(impl_.get()));
  builder.RegisterService(
      static_cast<v1::CheckpointService::Service*>(impl_.get()));
  builder.RegisterService(
      static_cast<v1::WorkerSession::Service*>(impl_.get()));
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    server_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen,
                     " (address in use or not a local address?)"));
  }
  server_->GetHealthCheckService()->SetServingStatus(true);
  ticker_ = std::thread([this] {
    while (!stopping_) {
      absl::SleepFor(options_.tick);
      impl_->Tick();
    }
  });
  return absl::OkStatus();
}

void CoordinatorServer::Wait() {
  if (server_) server_->Wait();
}

void CoordinatorServer::Shutdown() {
  if (stopping_.exchange(true)) return;
  if (server_) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(2));
  }
}

}  // namespace gemma
