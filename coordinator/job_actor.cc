#include "coordinator/job_actor.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace gemma {
namespace v1 = ::gemma::v1;

JobActor::JobActor(ThreadPool* pool, std::string job, EventHub* hub,
                   LogStore* logs, Forward forward,
                   absl::Duration forward_interval)
    : job_(std::move(job)),
      hub_(hub),
      logs_(logs),
      forward_(std::move(forward)),
      forward_interval_(forward_interval),
      actor_(pool) {}

void JobActor::OnEpoch(int64_t epoch) {
  actor_.Send([this, epoch] {
    if (epoch > newest_epoch_) {
      newest_epoch_ = epoch;
      last_forward_.clear();
    }
  });
}

void JobActor::OnLog(v1::RankRef ref, std::string text) {
  actor_.Send([this, ref = std::move(ref), text = std::move(text)] {
    if (!Stale(ref)) logs_->Append(job_, ref.attempt(), ref.rank(), text);
  });
}

void JobActor::OnProgress(v1::WorkerMessage::Progress p) {
  actor_.Send([this, p = std::move(p)] {
    if (Stale(p.rank())) return;
    const absl::Time now = absl::Now();
    const int rank = p.rank().rank();
    auto it = last_forward_.find(rank);
    if (it == last_forward_.end() || now - it->second >= forward_interval_ ||
        p.step() >= p.total_steps()) {
      last_forward_[rank] = now;
      forward_(p);
    }
    if (rank != 0) return;
    // Live only (not stored): watchers asking for progress see every step.
    v1::JobEvent ev;
    ev.set_revision(hub_->revision());
    ev.set_type(v1::EVENT_TYPE_PROGRESS);
    ev.mutable_job()->set_name(job_);
    ev.mutable_job()->set_current_epoch(p.rank().epoch());
    auto* rs = ev.mutable_job()->mutable_progress();
    rs->set_rank(rank);
    rs->set_started(true);
    rs->set_step(p.step());
    rs->set_total_steps(p.total_steps());
    *rs->mutable_metrics() = p.metrics();
    rs->set_last_progress_unix_ms(absl::ToUnixMillis(now));
    ev.set_time_unix_ms(absl::ToUnixMillis(now));
    ev.set_message(absl::StrCat("step ", p.step(), "/", p.total_steps()));
    hub_->Publish({ev});
  });
}

}  // namespace gemma
