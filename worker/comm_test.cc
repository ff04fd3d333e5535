// Every collective of the c10d Comm on 2 and 4 real Gloo ranks (threads of
// this process over a real TCPStore on 127.0.0.1), the tp/dp/ep group
// layout, and that Abort() and a failing rank never leave a rank hanging.
#include "worker/comm.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "jobs/job.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

// Turns a failed expectation inside a rank into a Status.
#define RANK_EXPECT(cond)                                                 \
  do {                                                                    \
    if (!(cond)) {                                                        \
      return absl::InternalError(absl::StrCat("rank ", rank, ": " #cond)); \
    }                                                                     \
  } while (0)

bool Same(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         at::equal(a, b);
}

class CollectivesTest : public ::testing::TestWithParam<int> {};

TEST_P(CollectivesTest, AllReduceSumAndMax) {
  const int n = GetParam();
  absl::Status s = RunGlooRanks(n, [n](int rank, ParallelGroups& g) {
    RANK_EXPECT(g.world->rank() == rank && g.world->size() == n);
    RANK_EXPECT(g.world->backend() == "gloo");
    at::Tensor t = at::arange(6, at::kFloat).reshape({2, 3}) * (rank + 1);
    g.world->AllReduceSum(t);
    const float tri = n * (n + 1) / 2.0f;
    RANK_EXPECT(Same(t, at::arange(6, at::kFloat).reshape({2, 3}) * tri));
    at::Tensor m = at::tensor({static_cast<float>(rank), -1.0f * rank});
    g.world->AllReduceMax(m);
    RANK_EXPECT(Same(m, at::tensor({static_cast<float>(n - 1), 0.0f})));
    // A non-contiguous view is reduced in place too.
    at::Tensor base = at::zeros({3, 4}, at::kDouble);
    at::Tensor col = base.select(1, 2);
    col.fill_(rank);
    g.world->AllReduceSum(col);
    RANK_EXPECT(base.select(1, 2).eq(n * (n - 1) / 2.0).all().item<bool>());
    RANK_EXPECT(base.select(1, 1).eq(0).all().item<bool>());
    // Integer tensors too.
    at::Tensor i = at::full({5}, rank, at::kLong);
    g.world->AllReduceSum(i);
    RANK_EXPECT(Same(i, at::full({5}, n * (n - 1) / 2, at::kLong)));
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST_P(CollectivesTest, AllGatherAlongAnyDim) {
  const int n = GetParam();
  absl::Status s = RunGlooRanks(n, [n](int rank, ParallelGroups& g) {
    at::Tensor t = at::full({2, 3}, rank, at::kFloat);
    at::Tensor d0 = g.world->AllGather(t, 0);
    at::Tensor d1 = g.world->AllGather(t, 1);
    RANK_EXPECT(d0.sizes() == at::IntArrayRef({2 * n, 3}));
    RANK_EXPECT(d1.sizes() == at::IntArrayRef({2, 3 * n}));
    for (int r = 0; r < n; ++r) {
      RANK_EXPECT(d0.narrow(0, 2 * r, 2).eq(r).all().item<bool>());
      RANK_EXPECT(d1.narrow(1, 3 * r, 3).eq(r).all().item<bool>());
    }
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST_P(CollectivesTest, BroadcastFromEveryRoot) {
  const int n = GetParam();
  absl::Status s = RunGlooRanks(n, [n](int rank, ParallelGroups& g) {
    for (int root = 0; root < n; ++root) {
      at::Tensor t = at::full({4}, 10 * rank + 1, at::kFloat);
      g.world->Broadcast(t, root);
      RANK_EXPECT(Same(t, at::full({4}, 10 * root + 1, at::kFloat)));
    }
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST_P(CollectivesTest, ReduceScatterSum) {
  const int n = GetParam();
  absl::Status s = RunGlooRanks(n, [n](int rank, ParallelGroups& g) {
    // Row i of rank r holds r + i; the sum over ranks of row i is
    // n*(n-1)/2 + n*i, and rank r keeps rows [2r, 2r+2).
    at::Tensor t =
        at::arange(2 * n, at::kFloat).unsqueeze(1).repeat({1, 3}) + rank;
    at::Tensor out = g.world->ReduceScatterSum(t);
    RANK_EXPECT(out.sizes() == at::IntArrayRef({2, 3}));
    for (int i = 0; i < 2; ++i) {
      const float want = n * (n - 1) / 2.0f + n * (2 * rank + i);
      RANK_EXPECT(out[i].eq(want).all().item<bool>());
    }
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST_P(CollectivesTest, AllToAllWithUnequalAndEmptySplits) {
  const int n = GetParam();
  absl::Status s = RunGlooRanks(n, [n](int rank, ParallelGroups& g) {
    // Rank r sends (r + d) % n rows of value 100*r + d to rank d.
    std::vector<at::Tensor> in;
    for (int d = 0; d < n; ++d) {
      in.push_back(at::full({(rank + d) % n, 2}, 100 * rank + d, at::kFloat));
    }
    std::vector<at::Tensor> out = g.world->AllToAll(in);
    RANK_EXPECT(static_cast<int>(out.size()) == n);
    for (int src = 0; src < n; ++src) {
      RANK_EXPECT(out[src].sizes() == at::IntArrayRef({(src + rank) % n, 2}));
      RANK_EXPECT(out[src].eq(100 * src + rank).all().item<bool>());
    }
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST_P(CollectivesTest, BarrierWaitsForEveryRank) {
  const int n = GetParam();
  std::atomic<int> arrived{0};
  absl::Status s = RunGlooRanks(n, [&](int rank, ParallelGroups& g) {
    if (rank == n - 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    arrived.fetch_add(1);
    g.world->Barrier();
    RANK_EXPECT(arrived.load() == n);
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

INSTANTIATE_TEST_SUITE_P(Ranks, CollectivesTest, ::testing::Values(2, 4),
                         [](const auto& info) {
                           return absl::StrCat(info.param, "ranks");
                         });

TEST(GroupsTest, TpFastestLayoutForTp2Dp2) {
  absl::Status s = RunGlooRanks(
      4,
      [](int rank, ParallelGroups& g) {
        const int tp_i = rank % 2, dp_i = rank / 2;
        RANK_EXPECT(g.tp->size() == 2 && g.tp->rank() == tp_i);
        RANK_EXPECT(g.dp->size() == 2 && g.dp->rank() == dp_i);
        RANK_EXPECT(g.world->size() == 4 && g.world->rank() == rank);
        // tp group: ranks {2*dp_i, 2*dp_i+1}; dp group: {tp_i, tp_i+2}.
        at::Tensor t = at::full({1}, 1 << rank, at::kLong);
        g.tp->AllReduceSum(t);
        RANK_EXPECT(t.item<int64_t>() == (3 << (2 * dp_i)));
        at::Tensor d = at::full({1}, 1 << rank, at::kLong);
        g.dp->AllReduceSum(d);
        RANK_EXPECT(d.item<int64_t>() == ((1 << tp_i) | (1 << (tp_i + 2))));
        at::Tensor tg = g.tp->AllGather(at::full({1}, rank, at::kLong), 0);
        RANK_EXPECT(Same(tg, at::tensor({2 * dp_i, 2 * dp_i + 1}, at::kLong)));
        return absl::OkStatus();
      },
      ParallelLayout{2, 2, 1});
  EXPECT_TRUE(s.ok()) << s;
}

TEST(GroupsTest, ExpertGroupsSliceDp) {
  // tp=1, dp=4, ep=2: ep groups {0,1} and {2,3}; ep=dp: the ep group is dp.
  absl::Status s = RunGlooRanks(
      4,
      [](int rank, ParallelGroups& g) {
        RANK_EXPECT(g.ep->size() == 2 && g.ep->rank() == rank % 2);
        at::Tensor t = at::full({1}, 1 << rank, at::kLong);
        g.ep->AllReduceSum(t);
        RANK_EXPECT(t.item<int64_t>() == (3 << (2 * (rank / 2))));
        RANK_EXPECT(g.tp->size() == 1 && g.tp->backend() == "single");
        return absl::OkStatus();
      },
      ParallelLayout{1, 4, 2});
  EXPECT_TRUE(s.ok()) << s;
  s = RunGlooRanks(
      2,
      [](int rank, ParallelGroups& g) {
        RANK_EXPECT(g.ep->size() == 2 && g.ep->rank() == rank);
        return absl::OkStatus();
      },
      ParallelLayout{1, 2, 2});
  EXPECT_TRUE(s.ok()) << s;
}

TEST(GroupsTest, ExpertGroupsFoldOverTensorParallelRanks) {
  // tp=2, dp=2, ep=4: one ep group of all 4 ranks across both TP groups, no
  // expert replicas (edp of one). ep=2: ep groups {0,1} and {2,3} (each one
  // TP group), edp {0,2} and {1,3}. ep=1 under TP: experts everywhere, edp
  // is the world.
  absl::Status s = RunGlooRanks(
      4,
      [](int rank, ParallelGroups& g) {
        RANK_EXPECT(g.tp->size() == 2 && g.tp->rank() == rank % 2);
        RANK_EXPECT(g.ep->size() == 4 && g.ep->rank() == rank);
        RANK_EXPECT(g.edp->size() == 1);
        at::Tensor t = at::full({1}, 1 << rank, at::kLong);
        g.ep->AllReduceSum(t);
        RANK_EXPECT(t.item<int64_t>() == 15);
        return absl::OkStatus();
      },
      ParallelLayout{2, 2, 4});
  EXPECT_TRUE(s.ok()) << s;
  s = RunGlooRanks(
      4,
      [](int rank, ParallelGroups& g) {
        RANK_EXPECT(g.ep->size() == 2 && g.ep->rank() == rank % 2);
        RANK_EXPECT(g.edp->size() == 2 && g.edp->rank() == rank / 2);
        at::Tensor t = at::full({1}, 1 << rank, at::kLong);
        g.edp->AllReduceSum(t);
        RANK_EXPECT(t.item<int64_t>() == (5 << (rank % 2)));
        return absl::OkStatus();
      },
      ParallelLayout{2, 2, 2});
  EXPECT_TRUE(s.ok()) << s;
  s = RunGlooRanks(
      2,
      [](int rank, ParallelGroups& g) {
        RANK_EXPECT(g.ep->size() == 1 && g.edp->size() == 2);
        RANK_EXPECT(g.edp->rank() == rank);
        return absl::OkStatus();
      },
      ParallelLayout{2, 1, 1});
  EXPECT_TRUE(s.ok()) << s;
}

TEST(GroupsTest, BadLayoutsAreRejectedWithTheField) {
  EXPECT_THAT(ValidateLayout({2, 2, 1}, 8).message(),
              HasSubstr("must equal the world size 8"));
  EXPECT_THAT(ValidateLayout({1, 4, 3}, 4).message(),
              HasSubstr("ep (3) must divide the world size 4"));
  EXPECT_THAT(ValidateLayout({0, 4, 1}, 4).message(), HasSubstr(">= 1"));
  GroupsOptions o;
  o.world = 2;
  o.layout = {1, 2, 1};
  o.store_address = "no-port-here";
  EXPECT_THAT(MakeParallelGroups(o).status().message(),
              HasSubstr("\"no-port-here\" is not host:port"));
}

TEST(GroupsTest, FromRankContextNeedsAStoreForSeveralRanks) {
  RankContext ctx;
  ctx.job = "j1";
  ctx.rank = 0;
  ctx.world = 2;
  ctx.spec.mutable_parallel()->set_dp(2);
  EXPECT_THAT(MakeParallelGroups(ctx).status().message(),
              HasSubstr("no rendezvous store address"));
  ctx.world = 1;
  ctx.spec.mutable_parallel()->set_dp(1);
  absl::StatusOr<ParallelGroups> g = MakeParallelGroups(ctx);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->world->backend(), "single");
}

TEST(GroupsTest, FromRankContextRegistersAbort) {
  absl::StatusOr<std::shared_ptr<RendezvousStore>> server =
      RendezvousStore::Serve("127.0.0.1", 0, 2);
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<std::function<void()>> aborts(2);
  std::vector<absl::Status> results(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      RankContext ctx;
      ctx.job = "j2";
      ctx.attempt = 3;
      ctx.rank = r;
      ctx.world = 2;
      ctx.device = "cpu";
      ctx.spec.mutable_parallel()->set_tp(2);
      ctx.store_address = (*server)->address();
      ctx.on_abort = [&, r](std::function<void()> f) { aborts[r] = f; };
      absl::StatusOr<ParallelGroups> g = MakeParallelGroups(ctx);
      if (!g.ok()) {
        results[r] = g.status();
        return;
      }
      at::Tensor t = at::ones({3});
      g->tp->AllReduceSum(t);
      if (!at::equal(t, at::full({3}, 2.0f))) {
        results[r] = absl::InternalError("wrong tp sum");
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& s : results) EXPECT_TRUE(s.ok()) << s;
  for (const auto& f : aborts) EXPECT_TRUE(static_cast<bool>(f));
}

TEST(AbortTest, AbortUnblocksAPendingCollective) {
  // Rank 1 never joins the all-reduce but fails after 300 ms; RunGlooRanks
  // then aborts rank 0's groups, whose pending all-reduce must fail at once,
  // long before the 60 s collective timeout.
  std::atomic<bool> rank0_failed{false};
  auto start = std::chrono::steady_clock::now();
  absl::Status s = RunGlooRanks(
      2,
      [&](int rank, ParallelGroups& g) -> absl::Status {
        if (rank == 1) {
          std::this_thread::sleep_for(std::chrono::milliseconds(300));
          return absl::AbortedError("rank 1 gives up");
        }
        at::Tensor t = at::ones({1024});
        try {
          g.world->AllReduceSum(t);
        } catch (const c10::Error& e) {
          rank0_failed = true;
          return absl::UnavailableError(e.what_without_backtrace());
        }
        return absl::OkStatus();
      },
      ParallelLayout{1, 2, 1}, absl::Seconds(60));
  double secs = std::chrono::duration<double>(
                    std::chrono::steady_clock::now() - start)
                    .count();
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_THAT(s.message(), HasSubstr("rank 1: rank 1 gives up"));
  EXPECT_TRUE(rank0_failed.load());
  EXPECT_LT(secs, 20.0);
}

TEST(AbortTest, CollectivesAfterAbortThrow) {
  absl::Status s = RunGlooRanks(2, [](int rank, ParallelGroups& g) {
    g.world->Barrier();
    g.world->Abort();
    at::Tensor t = at::ones({2});
    bool threw = false;
    try {
      g.world->AllReduceSum(t);
    } catch (const c10::Error& e) {
      threw = std::string(e.what()).find("aborted") != std::string::npos;
    }
    RANK_EXPECT(threw);
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST(StoreTest, ServeOnAFreePortAndConnect) {
  auto server = RendezvousStore::Serve("127.0.0.1", 0, 1);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT((*server)->port(), 0);
  auto client = RendezvousStore::Connect((*server)->address());
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->port(), (*server)->port());
  // Nothing listens on the server's port once it is gone.
  int port = (*server)->port();
  client->reset();
  server->reset();
  auto late = RendezvousStore::Connect(absl::StrCat("127.0.0.1:", port),
                                       absl::Seconds(2));
  EXPECT_FALSE(late.ok());
}

}  // namespace
}  // namespace gemma
