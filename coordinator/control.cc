#include "coordinator/control.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "coordinator/placement.h"
#include "proto/spec_check.h"

namespace gemma {
namespace v1 = ::gemma::v1;
namespace {

int64_t Ms(absl::Time t) { return absl::ToUnixMillis(t); }

absl::Duration Secs(double s) {
  return absl::Milliseconds(static_cast<int64_t>(s * 1000));
}

int64_t LoadCounter(Store* store, const char* name) {
  auto raw = store->GetRaw(Table::kMeta, name);
  int64_t v = 0;
  if (raw.ok() && raw->has_value()) (void)absl::SimpleAtoi(**raw, &v);
  return v;
}

}  // namespace

v1::Failure MakeFailure(v1::FailureReason reason, std::string message, int rank,
                        std::string worker) {
  v1::Failure f;
  f.set_reason(reason);
  f.set_message(std::move(message));
  f.set_rank(rank);
  f.set_worker(std::move(worker));
  return f;
}

ControlState::ControlState(Store* store, ControlOptions options)
    : store_(store), options_(std::move(options)) {}

absl::Status ControlState::Recover(absl::Time now) {
  started_ = now;
  revision_ = LoadCounter(store_, "revision");
  epoch_ = LoadCounter(store_, "epoch");
  job_seq_ = LoadCounter(store_, "job_seq");
  worker_seq_ = LoadCounter(store_, "worker_seq");
  absl::Status parse_error;
  absl::Status s = store_->Scan(
      Table::kJobs, "", "", [&](const std::string& k, const std::string& v) {
        JobEntry e;
        if (!e.job.ParseFromString(v)) {
          parse_error =
              absl::DataLossError(absl::StrCat("store: unparsable job ", k));
          return false;
        }
        jobs_[k] = std::move(e);
        return true;
      });
  if (!s.ok()) return s;
  if (!parse_error.ok()) return parse_error;
  s = store_->Scan(Table::kRequestIds, "", "",
                   [&](const std::string& k, const std::string& v) {
                     request_ids_[k] = v;
                     return true;
                   });
  if (!s.ok()) return s;
  bool any_live = false;
  for (auto& [name, e] : jobs_) {
    const auto st = e.job.state();
    if (st == v1::JOB_STATE_QUEUED) Enqueue(e);
    if ((st == v1::JOB_STATE_STARTING || st == v1::JOB_STATE_RUNNING ||
         st == v1::JOB_STATE_CANCELLING) &&
        e.job.current_epoch() > 0) {
      v1::Attempt a;
      auto got = store_->Get(Table::kAttempts,
                             AttemptKey(name, e.job.attempt_count()), &a);
      if (!got.ok()) return got.status();
      if (*got && a.epoch() == e.job.current_epoch()) {
        e.live = std::move(a);
        any_live = true;
      }
    }
  }
  // Workers known before the restart are expected back; their records stay
  // until the grace period ends.
  int known_workers = 0;
  s = store_->Scan(Table::kWorkers, "", "",
                   [&](const std::string&, const std::string&) {
                     ++known_workers;
                     return true;
                   });
  if (!s.ok()) return s;
  if (any_live || known_workers > 0) {
    grace_until_ = now + options_.grace;
    grace_pending_ = true;
  }
  GEMMA_LOG(INFO) << "recovered " << jobs_.size() << " jobs (" << queue_.size()
                  << " queued), revision " << revision_ << ", epoch " << epoch_
                  << (grace_pending_
                          ? absl::StrCat(", grace period ",
                                         absl::FormatDuration(options_.grace))
                          : std::string());
  return absl::OkStatus();
}

// ---- persistence -----------------------------------------------------------

void ControlState::Emit(Txn& txn, JobEntry& e, v1::EventType type,
                        const std::string& message, absl::Time now) {
  e.job.set_revision(++revision_);
  e.job.set_update_time_unix_ms(Ms(now));
  txn.batch.Put(Table::kJobs, e.job.name(), e.job);
  v1::JobEvent ev;
  ev.set_revision(revision_);
  ev.set_type(type);
  *ev.mutable_job() = e.job;
  ev.set_message(message);
  ev.set_time_unix_ms(Ms(now));
  txn.batch.Put(Table::kEvents, RevisionKey(revision_), ev);
  txn.events.push_back(std::move(ev));
  txn.touched = true;
}

void ControlState::Commit(Txn& txn, Effects* fx) {
  if (!txn.touched && txn.batch.size() == 0) return;
  txn.batch.PutRaw(Table::kMeta, "revision", absl::StrCat(revision_));
  txn.batch.PutRaw(Table::kMeta, "epoch", absl::StrCat(epoch_));
  txn.batch.PutRaw(Table::kMeta, "job_seq", absl::StrCat(job_seq_));
  txn.batch.PutRaw(Table::kMeta, "worker_seq", absl::StrCat(worker_seq_));
  absl::Status s = store_->Write(txn.batch);
  if (!s.ok()) GEMMA_LOG(ERROR) << "store write failed: " << s;
  for (auto& ev : txn.events) fx->events.push_back(std::move(ev));
  txn = Txn();
}

void ControlState::SetState(JobEntry& e, v1::JobState state, absl::Time now) {
  e.job.set_state(state);
  if (IsTerminal(state)) e.job.set_end_time_unix_ms(Ms(now));
}

void ControlState::Enqueue(JobEntry& e) {
  queue_.emplace(-e.job.spec().priority(), e.job.queue_seq(), e.job.name());
  dirty_ = true;
}

bool ControlState::IsFinished(const std::string& job) const {
  auto it = jobs_.find(job);
  return it != jobs_.end() && IsTerminal(it->second.job.state());
}

// ---- JobService ------------------------------------------------------------

absl::StatusOr<v1::Job> ControlState::Submit(const v1::SubmitJobRequest& req,
                                             absl::Time now, Effects* fx) {
  if (!req.request_id().empty()) {
    auto it = request_ids_.find(req.request_id());
    if (it != request_ids_.end()) {
      auto j = jobs_.find(it->second);
      if (j != jobs_.end()) return View(j->second);
    }
    if (req.request_id().size() > 256) {
      return absl::InvalidArgumentError(
          "request_id: longer than 256 characters");
    }
  }
  if (!req.has_spec()) return absl::InvalidArgumentError("spec: required");
  if (absl::Status s = ValidateJobSpec(req.spec()); !s.ok()) return s;
  std::string name;
  if (!req.job_id().empty()) {
    if (!IsValidJobId(req.job_id())) {
      return absl::InvalidArgumentError(
          absl::StrCat("job_id: '", req.job_id(),
                       "' must be 1-63 characters of a-z, 0-9 and '-'"));
    }
    name = "jobs/" + req.job_id();
    if (jobs_.count(name)) {
      return absl::AlreadyExistsError(absl::StrCat(name, " already exists"));
    }
  }
  ++job_seq_;
  if (name.empty()) {
    do {
      name = absl::StrFormat("jobs/j-%06d", job_seq_);
    } while (jobs_.count(name) && ++job_seq_);
  }
  JobEntry& e = jobs_[name];
  e.job.set_name(name);
  *e.job.mutable_spec() = req.spec();
  ApplySpecDefaults(e.job.mutable_spec());
  v1::JobSpec* spec = e.job.mutable_spec();
  if ((spec->kind() == v1::JOB_KIND_SFT || spec->kind() == v1::JOB_KIND_PEFT) &&
      spec->checkpoint().root().empty() && !options_.checkpoint_root.empty()) {
    spec->mutable_checkpoint()->set_root(
        absl::StrCat(options_.checkpoint_root, "/", name.substr(5)));
  }
  e.job.set_state(v1::JOB_STATE_QUEUED);
  e.job.set_request_id(req.request_id());
  e.job.set_create_time_unix_ms(Ms(now));
  e.job.set_queue_seq(job_seq_);
  Txn txn;
  if (!req.request_id().empty()) {
    request_ids_[req.request_id()] = name;
    txn.batch.PutRaw(Table::kRequestIds, req.request_id(), name);
  }
  Emit(txn, e, v1::EVENT_TYPE_STATE_CHANGED, "submitted", now);
  Enqueue(e);
  Commit(txn, fx);
  // Scheduling is its own transition (and batch).
  Schedule(now, txn, fx);
  Commit(txn, fx);
  return View(jobs_[name]);
}

absl::StatusOr<v1::Job> ControlState::Cancel(const std::string& name,
                                             absl::Time now, Effects* fx) {
  auto it = jobs_.find(name);
  if (it == jobs_.end())
    return absl::NotFoundError(absl::StrCat(name, " not found"));
  JobEntry& e = it->second;
  const v1::JobState st = e.job.state();
  if (IsTerminal(st)) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, " is already ", StateName(st),
                     "; only unfinished jobs can be cancelled"));
  }
  if (st == v1::JOB_STATE_CANCELLING) return e.job;
  Txn txn;
  if (st == v1::JOB_STATE_QUEUED || st == v1::JOB_STATE_RECOVERING || !e.live) {
    queue_.erase({-e.job.spec().priority(), e.job.queue_seq(), name});
    e.job.clear_waiting_reason();
    SetState(e, v1::JOB_STATE_CANCELLED, now);
    Emit(txn, e, v1::EVENT_TYPE_STATE_CHANGED, "cancelled by user", now);
  } else {
    SetState(e, v1::JOB_STATE_CANCELLING, now);
    e.live->set_state(v1::JOB_STATE_CANCELLING);
    txn.batch.Put(Table::kAttempts, AttemptKey(name, e.live->number()),
                  *e.live);
    for (const auto& r : e.live->ranks()) {
      if (r.finished()) continue;
      v1::CoordinatorMessage m;
      auto* ref = m.mutable_cancel()->mutable_rank();
      ref->set_job(name);
      ref->set_attempt(e.live->number());
      ref->set_epoch(e.live->epoch());
      ref->set_rank(r.rank());
      fx->sends.emplace_back(r.worker(), std::move(m));
    }
    Emit(txn, e, v1::EVENT_TYPE_STATE_CHANGED,
         "cancel requested; stopping ranks", now);
  }
  Commit(txn, fx);
  return e.job;
}

absl::StatusOr<v1::Job> ControlState::GetJob(const std::string& name) const {
  auto it = jobs_.find(name);
  if (it == jobs_.end())
    return absl::NotFoundError(absl::StrCat(name, " not found"));
  v1::Job job = View(it->second);
  absl::Status s = store_->Scan(Table::kAttempts, name + "#", "",
                                [&](const std::string&, const std::string& v) {
                                  job.add_attempts()->ParseFromString(v);
                                  return true;
                                });
  if (!s.ok()) return s;
  // The live attempt in memory has fresher rank progress than the store.
  if (it->second.live) {
    for (auto& a : *job.mutable_attempts()) {
      if (a.number() == it->second.live->number()) a = *it->second.live;
    }
  }
  return job;
}

absl::StatusOr<v1::ListJobsResponse> ControlState::ListJobs(
    const v1::ListJobsRequest& req) const {
  if (req.page_size() < 0)
    return absl::InvalidArgumentError("page_size: must be >= 0");
  const int size = req.page_size() == 0 ? 100 : std::min(req.page_size(), 1000);
  if (!req.page_token().empty() && req.page_token().rfind("jobs/", 0) != 0) {
    return absl::InvalidArgumentError("page_token: not a token from ListJobs");
  }
  std::set<int> states(req.states().begin(), req.states().end());
  v1::ListJobsResponse resp;
  auto it = req.page_token().empty() ? jobs_.begin()
                                     : jobs_.upper_bound(req.page_token());
  for (; it != jobs_.end(); ++it) {
    if (!states.empty() && !states.count(it->second.job.state())) continue;
    if (resp.jobs_size() == size) {
      resp.set_next_page_token(resp.jobs(size - 1).name());
      break;
    }
    *resp.add_jobs() = View(it->second);
  }
  return resp;
}

// ---- ClusterService --------------------------------------------------------

std::vector<v1::Worker> ControlState::ListWorkers() const {
  std::vector<v1::Worker> out;
  for (const auto& [name, w] : workers_) out.push_back(w.worker);
  return out;
}

v1::ClusterStatus ControlState::Status(absl::Time now) const {
  v1::ClusterStatus s;
  for (const auto& [name, w] : workers_) {
    const bool busy = !w.worker.job().empty();
    const bool cpu = w.worker.device_kind() == "cpu";
    s.set_workers_total(s.workers_total() + 1);
    (busy ? s.set_workers_busy(s.workers_busy() + 1)
          : s.set_workers_free(s.workers_free() + 1));
    if (cpu) {
      busy ? s.set_cpu_used(s.cpu_used() + 1)
           : s.set_cpu_free(s.cpu_free() + 1);
    } else {
      busy ? s.set_gpu_used(s.gpu_used() + 1)
           : s.set_gpu_free(s.gpu_free() + 1);
    }
  }
  for (const auto& [neg_prio, seq, name] : queue_) {
    const JobEntry& e = jobs_.at(name);
    if (s.queued_size() < 100) {
      auto* q = s.add_queued();
      q->set_job(name);
      q->set_world(WorldSize(e.job.spec()));
      q->set_waiting_reason(View(e).waiting_reason());
    }
  }
  for (const auto& [name, e] : jobs_) {
    const auto st = e.job.state();
    if (st == v1::JOB_STATE_QUEUED || st == v1::JOB_STATE_RECOVERING) {
      s.set_jobs_queued(s.jobs_queued() + 1);
    } else if (!IsTerminal(st)) {
      s.set_jobs_running(s.jobs_running() + 1);
    }
  }
  s.set_coordinator_version(options_.version);
  s.set_uptime_seconds(absl::ToInt64Seconds(now - started_));
  s.set_revision(revision_);
  s.set_in_grace_period(in_grace(now));
  return s;
}

// ---- scheduling ------------------------------------------------------------

void ControlState::Schedule(absl::Time now, Txn& txn, Effects* fx) {
  if (!dirty_) return;
  dirty_ = false;
  if (in_grace(now)) {
    dirty_ = true;  // reasons are filled in by View()
    return;
  }
  std::vector<const v1::Worker*> attached;
  for (const auto& [name, w] : workers_) attached.push_back(&w.worker);
  blocker_key_.reset();
  std::vector<QueueKey> started;
  // Impossible shapes seen in this pass (they do not block the queue).
  std::map<std::tuple<int, int, int, int64_t>, std::string> impossible;
  for (const auto& key : queue_) {
    JobEntry& e = jobs_[std::get<2>(key)];
    const auto& sp = e.job.spec();
    const auto shape =
        std::make_tuple(sp.parallel().tp(), sp.parallel().dp(),
                        static_cast<int>(sp.resources().device()),
                        sp.resources().min_memory_bytes());
    if (auto it = impossible.find(shape); it != impossible.end()) {
      e.job.set_waiting_reason(it->second);
      continue;
    }
    PlacementResult r = PlaceGang(sp, attached);
    if (r.workers.empty()) {
      e.job.set_waiting_reason(r.reason);
      if (r.impossible) {
        impossible.emplace(shape, r.reason);
        continue;
      }
      // Free capacity goes to the earliest job first (no overtaking): the
      // rest wait behind this one. View() fills their reasons when read, so
      // a pass costs O(jobs up to the blocker), not O(queue).
      blocker_key_ = key;
      behind_reason_ = absl::StrCat("waiting behind ", e.job.name(),
                                    " (earlier or higher priority)");
      break;
    }
    started.push_back(key);
    StartAttempt(e, r.workers, now, txn, fx);
  }
  for (const auto& k : started) queue_.erase(k);
}

v1::Job ControlState::View(const JobEntry& e) const {
  v1::Job job = e.job;
  if (job.state() != v1::JOB_STATE_QUEUED) return job;
  if (grace_pending_) {
    job.set_waiting_reason(
        "coordinator restarted; waiting for workers to re-attach before "
        "scheduling");
  } else if (blocker_key_ && QueueKey(-job.spec().priority(), job.queue_seq(),
                                      job.name()) > *blocker_key_) {
    std::vector<const v1::Worker*> attached;
    for (const auto& [name, w] : workers_) attached.push_back(&w.worker);
    PlacementResult r = PlaceGang(job.spec(), attached);
    job.set_waiting_reason(r.impossible ? r.reason : behind_reason_);
  }
  return job;
}

void ControlState::StartAttempt(JobEntry& e,
                                const std::vector<std::string>& workers,
                                absl::Time now, Txn& txn, Effects* fx) {
  const int number = e.job.attempt_count() + 1;
  const int64_t epoch = ++epoch_;
  v1::Attempt a;
  a.set_job(e.job.name());
  a.set_number(number);
  a.set_epoch(epoch);
  a.set_state(v1::JOB_STATE_STARTING);
  a.set_create_time_unix_ms(Ms(now));
  e.last_progress.clear();
  const int world = static_cast<int>(workers.size());
  for (int rank = 0; rank < world; ++rank) {
    auto* r = a.add_ranks();
    r->set_rank(rank);
    r->set_worker(workers[rank]);
    e.last_progress[rank] = now;
    v1::Worker& w = workers_[workers[rank]].worker;
    w.set_job(e.job.name());
    w.set_attempt(number);
    w.set_epoch(epoch);
    w.set_rank(rank);
    w.set_state(v1::WORKER_STATE_BUSY);
    v1::CoordinatorMessage m;
    auto* as = m.mutable_assign();
    as->mutable_rank()->set_job(e.job.name());
    as->mutable_rank()->set_attempt(number);
    as->mutable_rank()->set_epoch(epoch);
    as->mutable_rank()->set_rank(rank);
    as->set_world(world);
    *as->mutable_spec() = e.job.spec();
    fx->sends.emplace_back(workers[rank], std::move(m));
  }
  e.job.set_attempt_count(number);
  e.job.set_current_epoch(epoch);
  e.job.clear_waiting_reason();
  e.job.set_not_before_unix_ms(0);
  SetState(e, v1::JOB_STATE_STARTING, now);
  txn.batch.Put(Table::kAttempts, AttemptKey(e.job.name(), number), a);
  e.live = std::move(a);
  Emit(txn, e, v1::EVENT_TYPE_ATTEMPT_STARTED,
       absl::StrCat("attempt ", number, " (epoch ", epoch, ") on ",
                    absl::StrJoin(workers, ",")),
       now);
}

void ControlState::SendAbort(const std::string& worker, const v1::RankRef& ref,
                             const std::string& reason, Effects* fx) {
  v1::CoordinatorMessage m;
  *m.mutable_abort()->mutable_rank() = ref;
  m.mutable_abort()->set_reason(reason);
  fx->sends.emplace_back(worker, std::move(m));
}

void ControlState::FreeWorker(const std::string& worker, int64_t epoch) {
  auto it = workers_.find(worker);
  if (it == workers_.end() || it->second.worker.epoch() != epoch) return;
  v1::Worker& w = it->second.worker;
  w.clear_job();
  w.set_attempt(0);
  w.set_epoch(0);
  w.set_rank(0);
  w.set_state(v1::WORKER_STATE_IDLE);
  dirty_ = true;
}

void ControlState::FailAttempt(JobEntry& e, const v1::Failure& failure,
                               bool retry, absl::Time now, Txn& txn,
                               Effects* fx) {
  if (!e.live) return;
  v1::Attempt& a = *e.live;
  a.set_state(v1::JOB_STATE_FAILED);
  *a.mutable_failure() = failure;
  a.set_end_time_unix_ms(Ms(now));
  for (const auto& r : a.ranks()) {
    if (!r.finished()) {
      v1::RankRef ref;
      ref.set_job(e.job.name());
      ref.set_attempt(a.number());
      ref.set_epoch(a.epoch());
      ref.set_rank(r.rank());
      if (workers_.count(r.worker()))
        SendAbort(r.worker(), ref, failure.message(), fx);
    }
    FreeWorker(r.worker(), a.epoch());
  }
  txn.batch.Put(Table::kAttempts, AttemptKey(e.job.name(), a.number()), a);
  const int number = a.number();
  e.live.reset();
  e.last_progress.clear();
  e.job.set_current_epoch(0);
  *e.job.mutable_failure() = failure;
  const std::string what = absl::StrCat(
      "attempt ", number, " failed: ", ReasonName(failure.reason()), ": ",
      failure.message());
  const int restarts_used = e.job.attempt_count() - 1;
  if (e.job.state() == v1::JOB_STATE_CANCELLING) {
    SetState(e, v1::JOB_STATE_CANCELLED, now);
    Emit(txn, e, v1::EVENT_TYPE_ATTEMPT_ENDED, what + "; job cancelled", now);
  } else if (retry && restarts_used < e.job.spec().restart().max_restarts()) {
    const auto& pol = e.job.spec().restart();
    absl::Duration backoff =
        Secs(pol.backoff_seconds() * std::pow(2.0, restarts_used));
    const double cap =
        pol.max_backoff_seconds() > 0 ? pol.max_backoff_seconds() : 300;
    backoff = std::min(backoff, Secs(cap));
    e.job.set_not_before_unix_ms(Ms(now + backoff));
    SetState(e, v1::JOB_STATE_RECOVERING, now);
    Emit(
        txn, e, v1::EVENT_TYPE_ATTEMPT_ENDED,
        absl::StrCat(what, "; restart ", restarts_used + 1, " of ",
                     pol.max_restarts(), " in ", absl::FormatDuration(backoff)),
        now);
  } else {
    SetState(e, v1::JOB_STATE_FAILED, now);
    Emit(txn, e, v1::EVENT_TYPE_ATTEMPT_ENDED,
         absl::StrCat(what, retry ? "; no restarts left" : "; not retried"),
         now);
  }
}

void ControlState::MaybeFinishAttempt(JobEntry& e, absl::Time now, Txn& txn,
                                      Effects* fx) {
  if (!e.live) return;
  for (const auto& r : e.live->ranks()) {
    if (!r.finished()) return;
  }
  v1::Attempt& a = *e.live;
  const bool cancelling = e.job.state() == v1::JOB_STATE_CANCELLING;
  a.set_state(cancelling ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_SUCCEEDED);
  a.set_end_time_unix_ms(Ms(now));
  txn.batch.Put(Table::kAttempts, AttemptKey(e.job.name(), a.number()), a);
  const int number = a.number();
  e.live.reset();
  e.last_progress.clear();
  e.job.set_current_epoch(0);
  SetState(e, cancelling ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_SUCCEEDED,
           now);
  Emit(txn, e, v1::EVENT_TYPE_ATTEMPT_ENDED,
       absl::StrCat("attempt ", number,
                    cancelling ? " cancelled" : " succeeded"),
       now);
  (void)fx;
}

// ---- liveness --------------------------------------------------------------

void ControlState::WorkerLost(const std::string& worker, const std::string& why,
                              absl::Time now, Txn& txn, Effects* fx) {
  auto it = workers_.find(worker);
  if (it == workers_.end()) return;
  const v1::Worker w = it->second.worker;
  workers_.erase(it);
  txn.batch.Delete(Table::kWorkers, worker);
  txn.touched = true;
  dirty_ = true;
  GEMMA_LOG(WARNING) << worker << " lost: " << why;
  if (w.job().empty()) return;
  auto j = jobs_.find(w.job());
  if (j == jobs_.end() || !j->second.live ||
      j->second.live->epoch() != w.epoch())
    return;
  FailAttempt(j->second,
              MakeFailure(v1::FAILURE_REASON_WORKER_LOST,
                          absl::StrCat(worker, " running rank ", w.rank(),
                                       " lost: ", why),
                          w.rank(), worker),
              true, now, txn, fx);
}

void ControlState::EndGrace(absl::Time now, Txn& txn, Effects* fx) {
  grace_pending_ = false;
  dirty_ = true;
  // Workers that did not come back.
  std::vector<std::string> stale;
  (void)store_->Scan(Table::kWorkers, "", "",
                     [&](const std::string& k, const std::string&) {
                       if (!workers_.count(k)) stale.push_back(k);
                       return true;
                     });
  for (const auto& k : stale) txn.batch.Delete(Table::kWorkers, k);
  if (!stale.empty()) txn.touched = true;
  for (auto& [name, e] : jobs_) {
    if (!e.live) continue;
    std::vector<int> missing;
    for (const auto& r : e.live->ranks()) {
      auto w = workers_.find(r.worker());
      const bool back =
          r.finished() ||
          (w != workers_.end() && w->second.worker.epoch() == e.live->epoch() &&
           w->second.worker.job() == name);
      if (!back) missing.push_back(r.rank());
      e.last_progress[r.rank()] = now;
    }
    if (!missing.empty()) {
      FailAttempt(
          e,
          MakeFailure(v1::FAILURE_REASON_COORDINATOR_RESTART,
                      absl::StrCat(
                          "rank(s) ", absl::StrJoin(missing, ","),
                          " did not re-attach after the coordinator restarted"),
                      missing.front()),
          true, now, txn, fx);
    } else {
      MaybeFinishAttempt(e, now, txn, fx);
    }
  }
}

void ControlState::Tick(absl::Time now, Effects* fx) {
  Txn txn;
  if (grace_pending_ && !in_grace(now)) EndGrace(now, txn, fx);
  std::vector<std::string> expired;
  for (const auto& [name, w] : workers_) {
    if (now > w.lease_deadline) expired.push_back(name);
  }
  for (const auto& name : expired) {
    WorkerLost(name,
               absl::StrCat("no message within the ",
                            absl::FormatDuration(options_.lease), " lease"),
               now, txn, fx);
  }
  if (!in_grace(now)) {
    for (auto& [name, e] : jobs_) {
      if (e.job.state() == v1::JOB_STATE_RECOVERING &&
          Ms(now) >= e.job.not_before_unix_ms()) {
        e.job.set_not_before_unix_ms(0);
        SetState(e, v1::JOB_STATE_QUEUED, now);
        Emit(txn, e, v1::EVENT_TYPE_STATE_CHANGED,
             "backoff over; queued for a new attempt", now);
        Enqueue(e);
        continue;
      }
      if (!e.live) continue;
      const auto& t = e.job.spec().timeouts();
      if (t.max_runtime_seconds() > 0 &&
          now - absl::FromUnixMillis(e.live->create_time_unix_ms()) >
              Secs(t.max_runtime_seconds())) {
        FailAttempt(
            e,
            MakeFailure(v1::FAILURE_REASON_TIMEOUT,
                        absl::StrCat("ran longer than max_runtime_seconds=",
                                     t.max_runtime_seconds())),
            false, now, txn, fx);
        continue;
      }
      for (const auto& r : e.live->ranks()) {
        if (r.finished()) continue;
        const absl::Duration limit =
            r.started()
                ? (t.step_seconds() > 0 ? Secs(t.step_seconds())
                                        : options_.default_step_timeout)
                : (t.init_seconds() > 0 ? Secs(t.init_seconds())
                                        : options_.default_init_timeout);
        if (now - e.last_progress[r.rank()] > limit) {
          FailAttempt(
              e,
              MakeFailure(
                  v1::FAILURE_REASON_HUNG,
                  absl::StrCat(
                      "rank ", r.rank(), " on ", r.worker(),
                      " made no progress for ", absl::FormatDuration(limit),
                      r.started() ? " (step timeout)" : " (init timeout)"),
                  r.rank(), r.worker()),
              true, now, txn, fx);
          break;
        }
      }
    }
  }
  Schedule(now, txn, fx);
  Commit(txn, fx);
}

}  // namespace gemma
