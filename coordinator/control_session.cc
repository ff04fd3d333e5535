// ControlState's side of the worker sessions: Register (adopting or fencing a
// running rank), and the rank messages (started, progress, finished).
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "coordinator/control.h"
#include "proto/spec_check.h"

namespace gemma {
namespace v1 = ::gemma::v1;
namespace {

int64_t Ms(absl::Time t) { return absl::ToUnixMillis(t); }

}  // namespace

// ---- WorkerSession
// -----------------------------------------------------------

absl::StatusOr<std::string> ControlState::Register(
    int64_t session, const v1::WorkerMessage::Register& reg, absl::Time now,
    Effects* fx) {
  std::string name = reg.worker().name();
  Txn txn;
  if (!name.empty()) {
    if (name.rfind("workers/", 0) != 0 || name.size() > 200) {
      return absl::InvalidArgumentError(
          absl::StrCat("register.worker.name: '", name.substr(0, 200),
                       "' is not workers/{worker}"));
    }
    auto it = workers_.find(name);
    if (it != workers_.end() && it->second.session != session) {
      // Its old stream has not ended yet on our side: that session is gone.
      WorkerLost(name, "re-attached on a new session", now, txn, fx);
    }
  } else {
    name = absl::StrFormat("workers/w-%05d", ++worker_seq_);
  }
  WorkerEntry& we = workers_[name];
  we.worker = reg.worker();
  we.worker.set_name(name);
  we.worker.set_state(v1::WORKER_STATE_IDLE);
  we.worker.clear_job();
  we.worker.set_epoch(0);
  we.worker.set_last_heartbeat_unix(absl::ToUnixSeconds(now));
  we.session = session;
  we.lease_deadline = now + options_.lease;
  dirty_ = true;
  {
    v1::CoordinatorMessage m;
    m.mutable_registered()->set_worker_name(name);
    m.mutable_registered()->set_heartbeat_interval_ms(static_cast<int32_t>(
        absl::ToInt64Milliseconds(options_.heartbeat_interval)));
    fx->sends.emplace_back(name, std::move(m));
  }
  txn.batch.Put(Table::kWorkers, name, we.worker);
  txn.touched = true;
  const v1::RankRef& ref = reg.running();
  if (!ref.job().empty()) {
    JobEntry* e = nullptr;
    v1::RankStatus* rs = LiveRank(ref, &e);
    if (rs != nullptr && rs->worker() == name && !rs->finished()) {
      we.worker.set_job(ref.job());
      we.worker.set_attempt(ref.attempt());
      we.worker.set_epoch(ref.epoch());
      we.worker.set_rank(ref.rank());
      we.worker.set_state(v1::WORKER_STATE_BUSY);
      e->last_progress[ref.rank()] = now;
      if (e->job.state() == v1::JOB_STATE_CANCELLING &&
          !reg.running_finished()) {
        // The cancel may have been lost with the previous session: repeat it.
        v1::CoordinatorMessage m;
        *m.mutable_cancel()->mutable_rank() = ref;
        fx->sends.emplace_back(name, std::move(m));
      }
      GEMMA_LOG(INFO) << name << " re-attached running " << ref.job()
                      << " attempt " << ref.attempt() << " rank " << ref.rank();
      if (reg.running_finished()) {
        v1::WorkerMessage::RankFinished f;
        *f.mutable_rank() = ref;
        f.set_ok(reg.running_ok());
        f.set_error(reg.running_error());
        f.set_cancelled(reg.running_cancelled());
        OnFinished(name, f, now, txn, fx);
      }
    } else if (!reg.running_finished()) {
      GEMMA_LOG(WARNING) << name << " re-attached with stale " << ref.job()
                         << " epoch " << ref.epoch() << "; aborting it";
      SendAbort(name, ref,
                "stale attempt: the coordinator no longer runs this epoch", fx);
    }
  }
  Commit(txn, fx);
  return name;
}

v1::RankStatus* ControlState::LiveRank(const v1::RankRef& ref,
                                       JobEntry** entry) {
  auto it = jobs_.find(ref.job());
  if (it == jobs_.end() || !it->second.live ||
      it->second.live->epoch() != ref.epoch()) {
    return nullptr;
  }
  if (ref.rank() < 0 || ref.rank() >= it->second.live->ranks_size())
    return nullptr;
  *entry = &it->second;
  return it->second.live->mutable_ranks(ref.rank());
}

void ControlState::OnWorkerMessage(const std::string& worker, int64_t session,
                                   const v1::WorkerMessage& msg, absl::Time now,
                                   Effects* fx) {
  auto it = workers_.find(worker);
  if (it == workers_.end() || it->second.session != session)
    return;  // stale session
  it->second.lease_deadline = now + options_.lease;
  Txn txn;
  switch (msg.kind_case()) {
    case v1::WorkerMessage::kHeartbeat:
      it->second.worker.set_last_heartbeat_unix(absl::ToUnixSeconds(now));
      break;
    case v1::WorkerMessage::kStarted:
      OnStarted(msg.started().rank(), now, txn, fx);
      break;
    case v1::WorkerMessage::kStoreOpened:
      OnStoreOpened(worker, msg.store_opened(), txn, fx);
      break;
    case v1::WorkerMessage::kProgress:
      OnRankProgress(msg.progress(), now);
      break;
    case v1::WorkerMessage::kFinished:
      OnFinished(worker, msg.finished(), now, txn, fx);
      break;
    case v1::WorkerMessage::kCheckpoint:
      OnCheckpoint(msg.checkpoint(), now, txn);
      break;
    default:
      break;
  }
  Schedule(now, txn, fx);
  Commit(txn, fx);
}

void ControlState::OnSessionEnded(const std::string& worker, int64_t session,
                                  absl::Time now, Effects* fx) {
  auto it = workers_.find(worker);
  if (it == workers_.end() || it->second.session != session) return;
  Txn txn;
  WorkerLost(worker, "session stream ended", now, txn, fx);
  Schedule(now, txn, fx);
  Commit(txn, fx);
}

void ControlState::OnStoreOpened(const std::string& worker,
                                 const v1::WorkerMessage::StoreOpened& m,
                                 Txn& txn, Effects* fx) {
  JobEntry* e = nullptr;
  v1::RankStatus* rs = LiveRank(m.rank(), &e);
  // Only the live attempt's rank 0, from its own worker, opens the store.
  if (rs == nullptr || rs->worker() != worker || m.rank().rank() != 0) return;
  e->live->set_store_address(m.store_address());
  txn.batch.Put(Table::kAttempts, AttemptKey(e->job.name(), e->live->number()),
                *e->live);
  txn.touched = true;
  for (const auto& r : e->live->ranks()) {
    v1::CoordinatorMessage out;
    auto* rv = out.mutable_rendezvous();
    rv->mutable_rank()->set_job(e->job.name());
    rv->mutable_rank()->set_attempt(e->live->number());
    rv->mutable_rank()->set_epoch(e->live->epoch());
    rv->mutable_rank()->set_rank(r.rank());
    rv->set_store_address(m.store_address());
    fx->sends.emplace_back(r.worker(), std::move(out));
  }
}

void ControlState::OnStarted(const v1::RankRef& ref, absl::Time now, Txn& txn,
                             Effects* fx) {
  JobEntry* e = nullptr;
  v1::RankStatus* rs = LiveRank(ref, &e);
  if (rs == nullptr) return;
  rs->set_started(true);
  rs->set_last_progress_unix_ms(Ms(now));
  e->last_progress[ref.rank()] = now;
  if (e->job.state() != v1::JOB_STATE_STARTING) return;
  for (const auto& r : e->live->ranks()) {
    if (!r.started()) return;
  }
  e->live->set_state(v1::JOB_STATE_RUNNING);
  txn.batch.Put(Table::kAttempts, AttemptKey(e->job.name(), e->live->number()),
                *e->live);
  SetState(*e, v1::JOB_STATE_RUNNING, now);
  Emit(txn, *e, v1::EVENT_TYPE_STATE_CHANGED,
       absl::StrCat("all ", e->live->ranks_size(), " ranks of attempt ",
                    e->live->number(), " started"),
       now);
  (void)fx;
}

void ControlState::OnRankProgress(const v1::WorkerMessage::Progress& p,
                                  absl::Time now) {
  JobEntry* e = nullptr;
  v1::RankStatus* rs = LiveRank(p.rank(), &e);
  if (rs == nullptr) return;  // stale epoch
  rs->set_step(p.step());
  rs->set_total_steps(p.total_steps());
  *rs->mutable_metrics() = p.metrics();
  rs->set_last_progress_unix_ms(Ms(now));
  e->last_progress[p.rank().rank()] = now;
  if (p.rank().rank() == 0) *e->job.mutable_progress() = *rs;
}

void ControlState::OnFinished(const std::string& worker,
                              const v1::WorkerMessage::RankFinished& f,
                              absl::Time now, Txn& txn, Effects* fx) {
  JobEntry* e = nullptr;
  v1::RankStatus* rs = LiveRank(f.rank(), &e);
  if (rs == nullptr || rs->worker() != worker) return;  // stale: nothing to do
  rs->set_finished(true);
  FreeWorker(worker, f.rank().epoch());
  if (!f.ok() && !f.cancelled()) {
    const auto reason = f.unimplemented() ? v1::FAILURE_REASON_UNIMPLEMENTED
                                          : v1::FAILURE_REASON_RANK_ERROR;
    FailAttempt(
        *e,
        MakeFailure(reason,
                    absl::StrCat("rank ", f.rank().rank(), ": ", f.error()),
                    f.rank().rank(), worker),
        !f.unimplemented(), now, txn, fx);
    return;
  }
  if (f.cancelled() && e->job.state() != v1::JOB_STATE_CANCELLING) {
    FailAttempt(
        *e,
        MakeFailure(v1::FAILURE_REASON_RANK_ERROR,
                    absl::StrCat("rank ", f.rank().rank(), " stopped unasked"),
                    f.rank().rank(), worker),
        true, now, txn, fx);
    return;
  }
  txn.batch.Put(Table::kAttempts, AttemptKey(e->job.name(), e->live->number()),
                *e->live);
  txn.touched = true;
  MaybeFinishAttempt(*e, now, txn, fx);
}

}  // namespace gemma
