// The actor runtime: one message at a time per actor, in send order, actors
// in parallel on the pool, Ask returning results.
#include "coordinator/actor.h"

#include <atomic>

#include "gtest/gtest.h"

namespace gemma {
namespace {

TEST(ActorTest, MessagesRunInOrderOneAtATime) {
  ThreadPool pool(4);
  Actor actor(&pool);
  std::vector<int> seen;  // touched only by the actor's messages
  std::atomic<int> inside{0};
  std::atomic<bool> overlap{false};
  for (int i = 0; i < 2000; ++i) {
    actor.Send([&, i] {
      if (inside.fetch_add(1) != 0) overlap = true;
      seen.push_back(i);
      EXPECT_TRUE(actor.OnActor());
      inside.fetch_sub(1);
    });
  }
  actor.Drain();
  EXPECT_FALSE(overlap);
  ASSERT_EQ(seen.size(), 2000u);
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(seen[i], i);
  EXPECT_FALSE(actor.OnActor());
}

TEST(ActorTest, AskReturnsTheValueAndActorsRunConcurrently) {
  ThreadPool pool(2);
  Actor a(&pool), b(&pool);
  std::atomic<bool> a_running{false}, b_saw_a{false};
  a.Send([&] {
    a_running = true;
    for (int i = 0; i < 200 && !b_saw_a; ++i)
      absl::SleepFor(absl::Milliseconds(5));
    a_running = false;
  });
  b.Send([&] {
    for (int i = 0; i < 200 && !a_running; ++i)
      absl::SleepFor(absl::Milliseconds(5));
    b_saw_a = a_running.load();
  });
  EXPECT_EQ(b.Ask([] { return 41 + 1; }).get(), 42);
  a.Drain();
  EXPECT_TRUE(b_saw_a);
}

}  // namespace
}  // namespace gemma
