#include "coordinator/actor.h"

namespace gemma {

ThreadPool::ThreadPool(int threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (auto& t : threads_) t.join();
}

void ThreadPool::Submit(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  tasks_.push_back(std::move(task));
}

void ThreadPool::Loop() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](ThreadPool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
            return p->stopping_ || !p->tasks_.empty();
          },
          this));
      if (tasks_.empty()) return;  // stopping and drained
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

void Actor::Send(std::function<void()> message) {
  bool schedule = false;
  {
    absl::MutexLock lock(&mu_);
    mailbox_.push_back(std::move(message));
    if (!scheduled_) scheduled_ = schedule = true;
  }
  if (schedule) pool_->Submit([this] { RunSome(); });
}

void Actor::RunSome() {
  // Up to a few messages per turn, so one busy actor does not starve others.
  for (int i = 0; i < 64; ++i) {
    std::function<void()> msg;
    {
      absl::MutexLock lock(&mu_);
      if (mailbox_.empty()) {
        scheduled_ = false;
        return;
      }
      msg = std::move(mailbox_.front());
      mailbox_.pop_front();
      running_on_ = std::this_thread::get_id();
    }
    msg();
    absl::MutexLock lock(&mu_);
    running_on_ = std::thread::id();
  }
  pool_->Submit([this] { RunSome(); });
}

void Actor::Drain() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](Actor* a)
           ABSL_EXCLUSIVE_LOCKS_REQUIRED(a->mu_) { return !a->scheduled_; },
      this));
}

bool Actor::OnActor() const {
  absl::MutexLock lock(&mu_);
  return running_on_ == std::this_thread::get_id();
}

}  // namespace gemma
