// ControlState's checkpoint catalog: records reported by ranks, committed when
// every rank reported, retention (keep last N, best K by a metric, pinned).
#include <algorithm>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "coordinator/control.h"

namespace gemma {
namespace v1 = ::gemma::v1;
namespace {

// "jobs/{job}/checkpoints/{step}" -> store key.
absl::StatusOr<std::string> KeyOf(const std::string& name) {
  const size_t at = name.find("/checkpoints/");
  int64_t step = 0;
  if (name.rfind("jobs/", 0) != 0 || at == std::string::npos ||
      !absl::SimpleAtoi(name.substr(at + 13), &step) || step < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "name: '", name, "' is not jobs/{job}/checkpoints/{step}"));
  }
  return CheckpointKey(name.substr(0, at), step);
}

}  // namespace

absl::StatusOr<v1::ListCheckpointsResponse> ControlState::ListCheckpoints(
    const std::string& job) const {
  if (!job.empty() && job.rfind("jobs/", 0) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("job: '", job, "' is not jobs/{job}"));
  }
  v1::ListCheckpointsResponse resp;
  absl::Status s =
      store_->Scan(Table::kCheckpoints, job.empty() ? "" : job + "#", "",
                   [&](const std::string&, const std::string& v) {
                     resp.add_checkpoints()->ParseFromString(v);
                     return true;
                   });
  if (!s.ok()) return s;
  return resp;
}

absl::StatusOr<v1::Checkpoint> ControlState::GetCheckpoint(
    const std::string& name) const {
  auto key = KeyOf(name);
  if (!key.ok()) return key.status();
  v1::Checkpoint c;
  auto got = store_->Get(Table::kCheckpoints, *key, &c);
  if (!got.ok()) return got.status();
  if (!*got) return absl::NotFoundError(absl::StrCat(name, " not found"));
  return c;
}

absl::StatusOr<v1::Checkpoint> ControlState::SetPinned(const std::string& name,
                                                       bool pinned) {
  auto c = GetCheckpoint(name);
  if (!c.ok()) return c.status();
  c->set_pinned(pinned);
  Store::Batch b;
  b.Put(Table::kCheckpoints, *KeyOf(name), *c);
  if (absl::Status s = store_->Write(b); !s.ok()) return s;
  return c;
}

absl::Status ControlState::DeleteCheckpoint(const std::string& name) {
  auto c = GetCheckpoint(name);
  if (!c.ok()) return c.status();
  if (c->pinned()) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, " is pinned; unpin it first"));
  }
  Store::Batch b;
  b.Delete(Table::kCheckpoints, *KeyOf(name));
  return store_->Write(b);
}

void ControlState::OnCheckpoint(const v1::WorkerMessage::CheckpointReport& r,
                                absl::Time now, Txn& txn) {
  JobEntry* e = nullptr;
  v1::RankStatus* rs = LiveRank(r.rank(), &e);
  if (rs == nullptr || r.step() < 0) return;
  const std::string key = CheckpointKey(e->job.name(), r.step());
  v1::Checkpoint c;
  auto got = store_->Get(Table::kCheckpoints, key, &c);
  if (!got.ok()) return;
  if (!*got || c.attempt() != e->live->number()) {
    c = v1::Checkpoint();
    c.set_name(absl::StrCat(e->job.name(), "/checkpoints/", r.step()));
    c.set_job(e->job.name());
    c.set_step(r.step());
    c.set_attempt(e->live->number());
    c.set_state(v1::CHECKPOINT_STATE_WRITING);
    c.set_world(e->live->ranks_size());
    c.set_create_time_unix_ms(absl::ToUnixMillis(now));
  }
  if (c.state() == v1::CHECKPOINT_STATE_COMMITTED) return;
  c.set_ranks_reported(c.ranks_reported() + 1);
  c.set_bytes(c.bytes() + r.bytes());
  if (r.rank().rank() == 0) {
    c.set_path(r.path());
    for (const auto& [k, v] : r.metrics()) (*c.mutable_metrics())[k] = v;
  }
  if (c.ranks_reported() >= c.world())
    c.set_state(v1::CHECKPOINT_STATE_COMMITTED);
  txn.batch.Put(Table::kCheckpoints, key, c);
  txn.touched = true;
  if (c.state() == v1::CHECKPOINT_STATE_COMMITTED) {
    // Retention sees the store plus this batch's record.
    std::vector<v1::Checkpoint> all;
    (void)store_->Scan(Table::kCheckpoints, e->job.name() + "#", "",
                       [&](const std::string& k, const std::string& v) {
                         if (k != key) all.emplace_back().ParseFromString(v);
                         return true;
                       });
    all.push_back(c);
    const auto& pol = e->job.spec().checkpoint();
    if (pol.keep_last_n() == 0 && pol.keep_best_k() == 0) return;
    std::vector<const v1::Checkpoint*> committed;
    for (const auto& x : all) {
      if (x.state() == v1::CHECKPOINT_STATE_COMMITTED) committed.push_back(&x);
    }
    std::set<int64_t> keep;
    std::sort(committed.begin(), committed.end(),
              [](auto* a, auto* b) { return a->step() > b->step(); });
    for (int i = 0;
         i < pol.keep_last_n() && i < static_cast<int>(committed.size()); ++i) {
      keep.insert(committed[i]->step());
    }
    if (pol.keep_best_k() > 0) {
      std::vector<const v1::Checkpoint*> scored;
      for (auto* x : committed) {
        if (x->metrics().count(pol.best_metric())) scored.push_back(x);
      }
      const bool max = pol.best_mode() == v1::METRIC_MODE_MAX;
      std::sort(scored.begin(), scored.end(), [&](auto* a, auto* b) {
        const double va = a->metrics().at(pol.best_metric());
        const double vb = b->metrics().at(pol.best_metric());
        return max ? va > vb : va < vb;
      });
      for (int i = 0;
           i < pol.keep_best_k() && i < static_cast<int>(scored.size()); ++i) {
        keep.insert(scored[i]->step());
      }
    }
    for (auto* x : committed) {
      if (!x->pinned() && !keep.count(x->step())) {
        txn.batch.Delete(Table::kCheckpoints,
                         CheckpointKey(x->job(), x->step()));
      }
    }
  }
}

}  // namespace gemma
