#include "jobs/grad_sync.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "jobs/dp_test_util.h"
#include "worker/comm.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

std::vector<TrainParam> Params(std::vector<std::vector<int64_t>> shapes,
                               at::ScalarType dtype = at::kFloat) {
  std::vector<TrainParam> out;
  for (size_t i = 0; i < shapes.size(); ++i) {
    out.push_back({absl::StrCat("p", i),
                   at::zeros(shapes[i], at::TensorOptions().dtype(dtype))
                       .set_requires_grad(true)});
  }
  return out;
}

TEST(GradSyncLayoutTest, ReverseOrderBucketsPaddedToDpAndSegmentsTileThem) {
  auto params = Params({{10, 10}, {7}, {30, 3}, {5}, {40}, {3, 3}});
  params[3].tp_partial = true;
  // 100 floats = 400 bytes per bucket at most before closing.
  BucketLayout layout(params, 400, 4);
  ASSERT_EQ(layout.dtypes().size(), 1u);
  const auto& buckets = layout.buckets();
  // Reverse order: p5 p4 p2 (closed at >= 100 floats), p1 p0, then the
  // TP-partial p3 alone at the end.
  ASSERT_EQ(buckets.size(), 3u);
  EXPECT_EQ(buckets[0].params, (std::vector<int>{5, 4, 2}));
  EXPECT_EQ(buckets[1].params, (std::vector<int>{1, 0}));
  EXPECT_EQ(buckets[2].params, (std::vector<int>{3}));
  EXPECT_FALSE(buckets[0].tp_partial);
  EXPECT_FALSE(buckets[1].tp_partial);
  EXPECT_TRUE(buckets[2].tp_partial);
  EXPECT_EQ(buckets[0].numel, 140);  // 139 padded to a multiple of 4
  EXPECT_EQ(buckets[2].numel, 8);
  int64_t total = 0;
  for (const auto& b : buckets) {
    EXPECT_EQ(b.numel % 4, 0);
    EXPECT_EQ(b.segment * 4, b.numel);
    total += b.numel;
  }
  EXPECT_EQ(total, layout.buffer_numel()[0]);
  // Every element of every parameter is in exactly one rank's segment.
  std::vector<std::vector<int>> hits(params.size());
  for (size_t i = 0; i < params.size(); ++i)
    hits[i].assign(params[i].param.numel(), 0);
  for (size_t b = 0; b < buckets.size(); ++b) {
    for (int r = 0; r < 4; ++r) {
      const int64_t begin = layout.SegmentOffset(b, r);
      for (const auto& piece : layout.SegmentPieces(b, r)) {
        EXPECT_GE(piece.buffer_offset, begin);
        EXPECT_LE(piece.buffer_offset + piece.numel,
                  begin + buckets[b].segment);
        EXPECT_EQ(piece.buffer_offset,
                  layout.slots()[piece.param].offset + piece.param_offset);
        for (int64_t e = 0; e < piece.numel; ++e)
          ++hits[piece.param][piece.param_offset + e];
      }
    }
  }
  for (size_t i = 0; i < params.size(); ++i) {
    for (int h : hits[i]) ASSERT_EQ(h, 1) << params[i].name;
  }
}

TEST(GradSyncLayoutTest, OneBufferPerDtype) {
  auto params = Params({{4}, {6}});
  auto more = Params({{8}}, at::kBFloat16);
  params.push_back(more[0]);
  BucketLayout layout(params, 1 << 20, 2);
  ASSERT_EQ(layout.dtypes().size(), 2u);
  EXPECT_EQ(layout.dtypes()[0], at::kBFloat16);  // the last parameter first
  EXPECT_EQ(layout.buffer_numel()[0], 8);
  EXPECT_EQ(layout.buffer_numel()[1], 10);
  for (const auto& b : layout.buckets()) {
    for (int i : b.params)
      EXPECT_EQ(layout.dtypes()[b.buffer], params[i].param.scalar_type());
  }
}

// One rank: .grad() are views of the buffer, accumulate in place over micro
// batches, and ZeroGrad zeroes them (and re-attaches a reset grad).
TEST(GradSyncTest, GradsAreBufferViewsAccumulatedInPlace) {
  ToyNet net = ToyNet::Make(3, 8, /*bf16_bias=*/true);
  ParallelGroups single;
  GradSync sync(net.params, single, {});
  for (int step = 0; step < 2; ++step) {
    sync.ZeroGrad();
    for (int k = 0; k < 2; ++k) {
      sync.BeginBackward(k == 1);
      net.Loss(0, k).backward();
    }
    sync.FinishBackward();
    auto want = net.LocalGrads(0, 2);
    for (size_t i = 0; i < net.params.size(); ++i) {
      const at::Tensor& g = net.params[i].param.grad();
      const at::Tensor& buf = sync.buffer(
          sync.layout().buckets()[sync.layout().slots()[i].bucket].buffer);
      EXPECT_EQ(g.data_ptr(),
                static_cast<char*>(buf.data_ptr()) +
                    sync.layout().slots()[i].offset * buf.element_size())
          << net.params[i].name;
      EXPECT_TRUE(torch::equal(g, want[i])) << net.params[i].name;
    }
    EXPECT_FALSE(sync.used(0));  // "unused"
    EXPECT_FALSE(sync.used(1));  // "rank1_only" on rank 0
    EXPECT_TRUE(sync.used(2));
    net.params[2].param.mutable_grad().reset();  // someone resets it
  }
  sync.ZeroGrad();
  for (int i = 0; i < static_cast<int>(sync.layout().dtypes().size()); ++i)
    EXPECT_EQ(sync.buffer(i).abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(net.params[2].param.grad().defined());
}

struct DpCase {
  bool shard;
  bool overlap;
  int accum;
};

class GradSyncDpTest : public ::testing::TestWithParam<DpCase> {};

// DP = 2 on Gloo: the reduced gradients equal the sums of each rank's own
// gradients computed without collectives, bit for bit; buckets start during
// backward when overlapping; unused parameters neither hang nor count as
// used, and one used on rank 1 only counts as used on both.
TEST_P(GradSyncDpTest, ReducedGradientsAreTheSums) {
  const DpCase c = GetParam();
  absl::Status st = RunGlooRanks(2, [&](int rank, ParallelGroups& g) {
    ToyNet net = ToyNet::Make(6, 16, /*bf16_bias=*/true);
    GradSyncOptions o;
    o.bucket_bytes = 16 * 16 * 4;  // about one layer per bucket
    o.shard = c.shard;
    o.overlap = c.overlap;
    GradSync sync(net.params, g, o);
    RANK_CHECK(sync.layout().buckets().size() >= 6u);
    for (int step = 0; step < 2; ++step) {
      sync.ZeroGrad();
      for (int k = 0; k < c.accum; ++k) {
        sync.BeginBackward(k + 1 == c.accum);
        net.Loss(rank, k).backward();
      }
      sync.FinishBackward();
      if (c.overlap) {
        // Every bucket but the last (holding "unused") started early.
        RANK_CHECK(sync.launched_early() ==
                       static_cast<int>(sync.layout().buckets().size()) - 1,
                   "launched early: ", sync.launched_early());
      } else {
        RANK_CHECK(sync.launched_early() == 0);
      }
      auto g0 = net.LocalGrads(0, c.accum), g1 = net.LocalGrads(1, c.accum);
      const auto& layout = sync.layout();
      for (size_t b = 0; b < layout.buckets().size(); ++b) {
        const int owner_lo = c.shard ? rank : 0, owner_hi = c.shard ? rank : 1;
        for (int r = owner_lo; r <= owner_hi; ++r) {
          const at::Tensor buf = sync.buffer(layout.buckets()[b].buffer);
          for (const auto& piece : layout.SegmentPieces(b, r)) {
            at::Tensor want = (g0[piece.param] + g1[piece.param])
                                  .reshape({-1})
                                  .narrow(0, piece.param_offset, piece.numel);
            at::Tensor got = buf.narrow(0, piece.buffer_offset, piece.numel);
            RANK_CHECK(torch::equal(got, want), net.params[piece.param].name,
                       " differs in bucket ", b);
          }
        }
      }
      RANK_CHECK(!sync.used(0));
      RANK_CHECK(sync.used(1));
      RANK_CHECK(sync.used(2));
    }
    return absl::OkStatus();
  });
  EXPECT_TRUE(st.ok()) << st;
}

INSTANTIATE_TEST_SUITE_P(
    Modes, GradSyncDpTest,
    ::testing::Values(DpCase{false, true, 1}, DpCase{true, true, 1},
                      DpCase{false, false, 2}, DpCase{true, false, 1},
                      DpCase{true, true, 2}, DpCase{false, true, 2}),
    [](const ::testing::TestParamInfo<DpCase>& i) {
      return absl::StrCat(i.param.shard ? "ReduceScatter" : "AllReduce",
                          i.param.overlap ? "Overlapped" : "AfterBackward",
                          "Accum", i.param.accum);
    });

// TP = 2 x DP = 2: a TP-partial parameter's gradient is summed over TP, then
// over DP; the others only over DP.
TEST(GradSyncTpTest, PartialGradientsAreSummedOverTpFirst) {
  absl::Status st = RunGlooRanks(
      4,
      [&](int rank, ParallelGroups& g) {
        const int tp = g.tp->rank(), dp = g.dp->rank();
        std::vector<TrainParam> params = Params({{6}, {5}});
        params[1].tp_partial = true;
        GradSync sync(params, g, {});
        sync.ZeroGrad();
        sync.BeginBackward(true);
        // d/dp of sum(p * c) is c: rank-dependent constants.
        ((params[0].param * (1.0 + dp)).sum() +
         (params[1].param * (10.0 * (tp + 1) + dp)).sum())
            .backward();
        sync.FinishBackward();
        // p0: 1 + 2 over DP. p1: sum over tp, dp of 10 (tp + 1) + dp
        // = 10 + 20 + 10 + 20 + 0 + 0 + 1 + 1 = 62.
        RANK_CHECK(params[0].param.grad().eq(3.0).all().item<bool>());
        RANK_CHECK(params[1].param.grad().eq(62.0).all().item<bool>(),
                   c10::str(params[1].param.grad()));
        return absl::OkStatus();
      },
      ParallelLayout{2, 2, 1});
  EXPECT_TRUE(st.ok()) << st;
}

// The async collectives of the Gloo Comm against their blocking forms.
TEST(GradSyncAsyncCommTest, AsyncCollectivesMatchTheBlockingOnes) {
  absl::Status st = RunGlooRanks(2, [](int rank, ParallelGroups& g) {
    Comm& c = *g.dp;
    at::Tensor base = at::arange(8, at::kFloat) * (rank + 1);
    // All-reduce on a view inside a larger buffer.
    at::Tensor buf = at::zeros({20});
    buf.narrow(0, 4, 8).copy_(base);
    at::Tensor view = buf.narrow(0, 4, 8);
    auto w1 = c.AllReduceSumAsync(view);
    // Reduce-scatter in place (output = own part of input) and into another
    // tensor, both outstanding at once with the all-reduce.
    at::Tensor rs_in = base.clone();
    at::Tensor rs_own = rs_in.narrow(0, rank * 4, 4);
    auto w2 = c.ReduceScatterSumAsync(rs_in, rs_own);
    at::Tensor rs_in2 = base.clone().to(at::kBFloat16);
    at::Tensor rs_out = at::zeros({4}, at::kBFloat16);
    auto w3 = c.ReduceScatterSumAsync(rs_in2, rs_out);
    // All-gather in place.
    at::Tensor ag = at::zeros({8});
    ag.narrow(0, rank * 4, 4).fill_(rank + 1);
    at::Tensor ag_mine = ag.narrow(0, rank * 4, 4);
    auto w4 = c.AllGatherIntoAsync(ag_mine, ag);
    for (auto& w : {w1, w2, w3, w4}) w->Wait();
    w1->Wait();  // a second Wait returns at once
    at::Tensor sum = at::arange(8, at::kFloat) * 3;
    RANK_CHECK(torch::equal(view, sum));
    RANK_CHECK(buf.narrow(0, 0, 4).eq(0).all().item<bool>());
    RANK_CHECK(torch::equal(rs_own, sum.narrow(0, rank * 4, 4)));
    RANK_CHECK(
        torch::equal(rs_out, sum.narrow(0, rank * 4, 4).to(at::kBFloat16)));
    RANK_CHECK(
        torch::equal(ag, at::cat({at::full({4}, 1.0f), at::full({4}, 2.0f)})));
    return absl::OkStatus();
  });
  EXPECT_TRUE(st.ok()) << st;
}

// The one-rank Comm's defaults run the blocking forms.
TEST(GradSyncAsyncCommTest, SingleRankDefaultsAreDone) {
  SingleRankComm c;
  at::Tensor t = at::ones({4});
  c.AllReduceSumAsync(t)->Wait();
  at::Tensor out = at::zeros({4});
  c.ReduceScatterSumAsync(t, out)->Wait();
  EXPECT_TRUE(torch::equal(out, t));
  at::Tensor all = at::zeros({4});
  c.AllGatherIntoAsync(t, all)->Wait();
  EXPECT_TRUE(torch::equal(all, t));
}

// A Wait() on a collective a peer never joins returns with an error once the
// group is aborted (not after the 60 s timeout); a Wait() after Abort()
// throws.
TEST(GradSyncAsyncCommTest, WaitThrowsOnceAborted) {
  std::atomic<bool> threw{false};
  const auto start = std::chrono::steady_clock::now();
  absl::Status st = RunGlooRanks(
      2,
      [&](int rank, ParallelGroups& g) -> absl::Status {
        if (rank == 1) {
          std::this_thread::sleep_for(std::chrono::milliseconds(300));
          return absl::AbortedError("rank 1 gives up");
        }
        at::Tensor t = at::ones({1024});
        at::Tensor out = at::zeros({512});
        auto w = g.dp->ReduceScatterSumAsync(t, out);
        try {
          w->Wait();
        } catch (const c10::Error& e) {
          threw = std::string(e.what()).find("aborted") != std::string::npos;
        }
        return absl::UnavailableError("rank 0 saw the abort");
      },
      ParallelLayout{1, 2, 1}, absl::Seconds(60));
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  EXPECT_THAT(st.message(), HasSubstr("rank 1 gives up"));
  EXPECT_TRUE(threw.load());
  EXPECT_LT(secs, 20.0);

  st = RunGlooRanks(2, [](int rank, ParallelGroups& g) {
    at::Tensor t = at::ones({16});
    auto w = g.dp->AllReduceSumAsync(t);
    g.dp->Barrier();
    g.dp->Abort();
    bool aborted = false;
    try {
      w->Wait();
    } catch (const c10::Error& e) {
      aborted = std::string(e.what()).find("aborted") != std::string::npos;
    }
    RANK_CHECK(aborted);
    return absl::OkStatus();
  });
  EXPECT_TRUE(st.ok()) << st;
}

// Parameters must be distinct leaves.
TEST(GradSyncTest, RejectsDuplicatesAndNonLeaves) {
  auto params = Params({{3}});
  params.push_back(params[0]);
  ParallelGroups single;
  EXPECT_THROW(GradSync(params, single, {}), c10::Error);
  std::vector<TrainParam> frozen = {{"f", at::zeros({2})}};
  EXPECT_THROW(GradSync(frozen, single, {}), c10::Error);
}

}  // namespace
}  // namespace gemma
