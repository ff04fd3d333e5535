#include "coordinator/hub.h"

#include <algorithm>

#include "common/log.h"
#include "coordinator/store.h"

#include "absl/time/clock.h"

namespace gemma {
namespace v1 = ::gemma::v1;

void EventHub::Publish(const std::vector<v1::JobEvent>& events) {
  absl::MutexLock lock(&mu_);
  for (const auto& ev : events) {
    if (ev.type() == v1::EVENT_TYPE_PROGRESS) {
      progress_.emplace_back(++progress_seq_, ev);
      if (progress_.size() > 1000) progress_.pop_front();
    } else if (ev.revision() > revision_) {
      revision_ = ev.revision();
    }
  }
}

int64_t EventHub::revision() const {
  absl::MutexLock lock(&mu_);
  return revision_;
}

void EventHub::SetRevision(int64_t revision) {
  absl::MutexLock lock(&mu_);
  revision_ = std::max(revision_, revision);
}

int64_t EventHub::progress_seq() const {
  absl::MutexLock lock(&mu_);
  return progress_seq_;
}

std::vector<v1::JobEvent> EventHub::ProgressSince(int64_t* seq) const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::JobEvent> out;
  for (const auto& [s, ev] : progress_) {
    if (s > *seq) out.push_back(ev);
  }
  *seq = progress_seq_;
  return out;
}

void EventHub::Wait(int64_t revision, int64_t progress_seq,
                    absl::Duration timeout) const {
  struct Args {
    const EventHub* hub;
    int64_t rev, seq;
  } args{this, revision, progress_seq};
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(
                           +[](Args* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                             return a->hub->revision_ > a->rev ||
                                    a->hub->progress_seq_ > a->seq;
                           },
                           &args),
                       timeout);
}

LogStore::JobLogs& LogStore::Load(const std::string& job) const {
  auto it = logs_.find(job);
  if (it != logs_.end()) return it->second;
  JobLogs& l = logs_[job];
  if (store_ == nullptr) return l;
  // After a restart: the job's persisted lines, the newest max_lines_ kept.
  absl::Status s = store_->Scan(
      Table::kLogs, job + "#", "", [&](const std::string&, const std::string& v) {
        v1::LogLine line;
        if (line.ParseFromString(v)) {
          l.seq = std::max(l.seq, line.seq());
          l.lines.push_back(std::move(line));
          if (l.lines.size() > max_lines_) l.lines.pop_front();
        }
        return true;
      });
  if (!s.ok()) GEMMA_LOG(WARNING) << "logs of " << job << ": " << s;
  return l;
}

void LogStore::Append(const std::string& job, int attempt, int rank,
                      const std::string& text) {
  absl::MutexLock lock(&mu_);
  JobLogs& l = Load(job);
  v1::LogLine line;
  line.set_seq(++l.seq);
  line.set_attempt(attempt);
  line.set_rank(rank);
  line.set_time_unix_ms(absl::ToUnixMillis(absl::Now()));
  line.set_text(text.size() > 4096 ? text.substr(0, 4096) : text);
  if (store_ != nullptr) {
    Store::Batch b;
    b.Put(Table::kLogs, LogKey(job, line.seq()), line);
    if (line.seq() > static_cast<int64_t>(max_lines_)) {
      b.Delete(Table::kLogs,
               LogKey(job, line.seq() - static_cast<int64_t>(max_lines_)));
    }
    absl::Status s = store_->WriteUnsynced(b);
    if (!s.ok()) GEMMA_LOG(WARNING) << "log line of " << job << ": " << s;
  }
  l.lines.push_back(std::move(line));
  if (l.lines.size() > max_lines_) l.lines.pop_front();
}

std::vector<v1::LogLine> LogStore::Read(const std::string& job,
                                        int64_t after_seq, int rank) const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::LogLine> out;
  for (const auto& l : Load(job).lines) {
    if (l.seq() > after_seq && (rank < 0 || l.rank() == rank)) out.push_back(l);
  }
  return out;
}

void LogStore::Wait(const std::string& job, int64_t after_seq,
                    absl::Duration timeout) const {
  struct Args {
    const LogStore* s;
    const std::string* job;
    int64_t seq;
  } args{this, &job, after_seq};
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(
                           +[](Args* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                             auto it = a->s->logs_.find(*a->job);
                             return it != a->s->logs_.end() &&
                                    it->second.seq > a->seq;
                           },
                           &args),
                       timeout);
}

}  // namespace gemma
