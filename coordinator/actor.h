// A small actor runtime. An Actor owns a mailbox; its messages (closures) run
// on a shared ThreadPool, one at a time and in the order they were sent, so
// the state an actor's messages touch needs no lock (it is only touched from
// inside its messages; Actor::OnActor() checks that in debug builds).
#ifndef GEMMA_COORDINATOR_ACTOR_H_
#define GEMMA_COORDINATOR_ACTOR_H_

#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace gemma {

// Fixed worker threads draining one FIFO of tasks.
class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  // Runs what is queued, then joins.
  ~ThreadPool();
  void Submit(std::function<void()> task);

 private:
  void Loop();
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

class Actor {
 public:
  explicit Actor(ThreadPool* pool) : pool_(pool) {}
  // Waits until the mailbox is empty and no message runs.
  ~Actor() { Drain(); }
  Actor(const Actor&) = delete;
  Actor& operator=(const Actor&) = delete;

  // Enqueues a message; returns at once.
  void Send(std::function<void()> message);

  // Enqueues `fn` and returns a future of its result.
  template <typename F>
  auto Ask(F fn) -> std::future<std::invoke_result_t<F>> {
    using R = std::invoke_result_t<F>;
    auto promise = std::make_shared<std::promise<R>>();
    auto future = promise->get_future();
    Send([promise, fn = std::move(fn)]() mutable {
      if constexpr (std::is_void_v<R>) {
        fn();
        promise->set_value();
      } else {
        promise->set_value(fn());
      }
    });
    return future;
  }

  // Blocks until every message sent so far has run.
  void Drain();
  // True on the thread running this actor's current message.
  bool OnActor() const;

 private:
  void RunSome();

  ThreadPool* pool_;
  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> mailbox_ ABSL_GUARDED_BY(mu_);
  bool scheduled_ ABSL_GUARDED_BY(mu_) = false;
  std::thread::id running_on_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gemma

#endif  // GEMMA_COORDINATOR_ACTOR_H_
