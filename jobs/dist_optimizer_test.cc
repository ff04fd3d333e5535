#include "jobs/dist_optimizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "jobs/dp_test_util.h"
#include "jobs/train_state.h"
#include "model/checkpoint.h"
#include "worker/comm.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

AdamWOptions Adam() {
  AdamWOptions o;
  o.weight_decay = 0.1;
  return o;
}

// One step of `net` through GradSync + DistOptimizer on micro batch `micro`.
double TrainStep(ToyNet& net, GradSync& sync, DistOptimizer& opt, int rank,
                 int micro, double lr, double clip) {
  sync.ZeroGrad();
  sync.BeginBackward(true);
  net.Loss(rank, micro).backward();
  sync.FinishBackward();
  const double norm = opt.ClipGradNorm(clip);
  opt.Step(lr);
  return norm;
}

// ZeRO-1 over DP = 2 equals jobs/optimizer.h's AdamW run on the summed
// gradients, bit for bit, fp32 and bf16 (fp32 master) parameters alike; a
// parameter no rank gave a gradient stays untouched (no weight decay either).
TEST(DistOptimizerTest, ShardedEqualsAdamWBitForBit) {
  absl::Status st = RunGlooRanks(2, [](int rank, ParallelGroups& g) {
    ToyNet net = ToyNet::Make(5, 16, /*bf16_bias=*/true);
    ToyNet ref = net.Clone();
    const at::Tensor unused_before = net.Param("unused").detach().clone();
    GradSyncOptions go;
    go.bucket_bytes = 700;  // segments cut through parameters
    go.shard = true;
    GradSync sync(net.params, g, go);
    DistOptimizer opt(sync, {Adam(), 1});
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const auto& p : ref.params) named.emplace_back(p.name, p.param);
    AdamW plain(named, Adam());
    for (int step = 0; step < 4; ++step) {
      const double lr = 1e-2 * (step + 1);
      TrainStep(net, sync, opt, rank, step, lr, /*clip=*/0);
      auto g0 = ref.LocalGrads(0, 1, step), g1 = ref.LocalGrads(1, 1, step);
      for (size_t i = 0; i < ref.params.size(); ++i) {
        if (ref.params[i].name == "unused") continue;  // grad None
        ref.params[i].param.mutable_grad() = g0[i] + g1[i];
      }
      plain.Step(lr);
      for (size_t i = 0; i < net.params.size(); ++i) {
        RANK_CHECK(torch::equal(net.params[i].param, ref.params[i].param),
                   net.params[i].name, " after step ", step + 1);
      }
    }
    RANK_CHECK(opt.steps() == 4);
    RANK_CHECK(torch::equal(net.Param("unused"), unused_before));
    RANK_CHECK(net.Param("b0").scalar_type() == at::kBFloat16);
    return absl::OkStatus();
  });
  EXPECT_TRUE(st.ok()) << st;
}

// Stage 0 and stage 1 agree to the bit, clipping included (the same norm).
TEST(DistOptimizerTest, StageZeroAndOneAgreeWithClipping) {
  absl::Status st = RunGlooRanks(2, [](int rank, ParallelGroups& g) {
    ToyNet a = ToyNet::Make(4, 16, /*bf16_bias=*/true);
    ToyNet b = a.Clone();
    GradSyncOptions go;
    go.bucket_bytes = 900;
    GradSync sync_a(a.params, g, go);
    go.shard = true;
    GradSync sync_b(b.params, g, go);
    DistOptimizer opt_a(sync_a, {Adam(), 0});
    DistOptimizer opt_b(sync_b, {Adam(), 1});
    for (int step = 0; step < 3; ++step) {
      const double na = TrainStep(a, sync_a, opt_a, rank, step, 0.01, 0.05);
      const double nb = TrainStep(b, sync_b, opt_b, rank, step, 0.01, 0.05);
      RANK_CHECK(na == nb, na, " vs ", nb);
      RANK_CHECK(na > 0.05, "clipping should be active: ", na);
      for (size_t i = 0; i < a.params.size(); ++i) {
        RANK_CHECK(torch::equal(a.params[i].param, b.params[i].param),
                   a.params[i].name);
      }
    }
    return absl::OkStatus();
  });
  EXPECT_TRUE(st.ok()) << st;
}

// TP = 2 x DP = 2 on 4 Gloo ranks: the norm counts a TP-sharded parameter's
// slice from every TP rank (but not the elements a rank's norm_skip names:
// rows another TP rank holds too), a replicated one once, a TP-partial one
// after summing over TP; each DP rank adds its owned segments. Checked against the
// norm computed by hand, for both stages; clipping then brings it to max.
TEST(DistOptimizerTest, TpDpNormByHand) {
  for (int stage : {0, 1}) {
    absl::Status st = RunGlooRanks(
        4,
        [stage](int rank, ParallelGroups& g) {
          const int tp = g.tp->rank(), dp = g.dp->rank();
          std::vector<TrainParam> params = {
              {"sharded", at::zeros({6}).set_requires_grad(true), true, false},
              {"replicated", at::zeros({5}).set_requires_grad(true)},
              {"partial", at::zeros({4}).set_requires_grad(true), false, true},
              {"sharded2", at::zeros({3, 3}).set_requires_grad(true), true,
               false,
               tp == 1 ? std::pair<int64_t, int64_t>{3, 6}
                       : std::pair<int64_t, int64_t>{0, 0}}};
          auto a = [](int tp, int dp) { return 1.0 + tp + 2.0 * dp; };
          auto b = [](int dp) { return 3.0 - dp; };
          auto c = [](int tp, int dp) { return 0.5 * (tp + 1) + dp; };
          const at::Tensor v = at::arange(1, 7, at::kFloat);
          const at::Tensor w = at::arange(1, 6, at::kFloat);
          const at::Tensor u = at::arange(1, 5, at::kFloat);
          const at::Tensor m = at::arange(1, 10, at::kFloat).reshape({3, 3});
          GradSyncOptions go;
          go.bucket_bytes = 24;  // several buckets, segments split them
          go.shard = stage == 1;
          GradSync sync(params, g, go);
          DistOptimizer opt(sync, {Adam(), stage});
          sync.ZeroGrad();
          sync.BeginBackward(true);
          ((params[0].param * v).sum() * a(tp, dp) +
           (params[1].param * w).sum() * b(dp) +
           (params[2].param * u).sum() * c(tp, dp) +
           (params[3].param * m).sum() * a(tp, dp) * 0.25)
              .backward();
          sync.FinishBackward();
          // By hand: sum over DP of each gradient; sharded slices from both
          // TP ranks, the replicated one once, the partial one over TP too.
          double want = 0;
          const double vv = v.square().sum().item<double>();
          const double ww = w.square().sum().item<double>();
          const double uu = u.square().sum().item<double>();
          const double mm = m.square().sum().item<double>();
          const double row1 = m[1].square().sum().item<double>();
          for (int t = 0; t < 2; ++t) {
            const double s = a(t, 0) + a(t, 1);
            want += s * s * vv + s * s * 0.0625 * (t == 1 ? mm - row1 : mm);
          }
          want += std::pow(b(0) + b(1), 2) * ww;
          want += std::pow(c(0, 0) + c(0, 1) + c(1, 0) + c(1, 1), 2) * uu;
          want = std::sqrt(want);
          const double got = opt.ClipGradNorm(want / 2);
          RANK_CHECK(std::abs(got - want) <= 1e-12 * want, "stage ", stage,
                     ": norm ", got, ", by hand ", want);
          const double after = opt.ClipGradNorm(0);
          RANK_CHECK(std::abs(after - want / 2) <= 1e-5 * want, "stage ", stage,
                     ": clipped norm ", after);
          return absl::OkStatus();
        },
        ParallelLayout{2, 2, 1});
    EXPECT_TRUE(st.ok()) << st;
  }
}

// A rank's ZeRO-1 state is about 1/dp of the replicated state.
TEST(DistOptimizerTest, ShardHoldsAboutOneOverDpOfTheState) {
  for (int dp : {2, 4}) {
    std::vector<int64_t> full(dp), shard(dp);
    absl::Status st = RunGlooRanks(dp, [&](int rank, ParallelGroups& g) {
      ToyNet a = ToyNet::Make(4, 32, /*bf16_bias=*/true);
      ToyNet b = a.Clone();
      GradSync sync_a(a.params, g, {4096, true, false});
      GradSync sync_b(b.params, g, {4096, true, true});
      full[rank] = DistOptimizer(sync_a, {Adam(), 0}).StateBytes();
      shard[rank] = DistOptimizer(sync_b, {Adam(), 1}).StateBytes();
      return absl::OkStatus();
    });
    ASSERT_TRUE(st.ok()) << st;
    int64_t sum = 0;
    for (int r = 0; r < dp; ++r) {
      EXPECT_EQ(full[r], full[0]);
      const double ratio = static_cast<double>(shard[r]) / full[r];
      EXPECT_NEAR(ratio, 1.0 / dp, 0.02) << "dp " << dp << " rank " << r;
      sum += shard[r];
    }
    // Together the shards hold the whole state (plus a little padding).
    EXPECT_GE(sum, full[0]);
    EXPECT_LE(sum, full[0] + 8 * 12 * dp * 2);
  }
}

// The shard file restores the state exactly and is refused, naming the file
// and the difference, by a run with another layout.
TEST(DistOptimizerTest, ShardFileRoundTripAndMismatch) {
  std::string tmpl = "/tmp/gemma_dist_opt_test_XXXXXX";
  const std::string dir = mkdtemp(tmpl.data());
  absl::Status st = RunGlooRanks(2, [&](int rank, ParallelGroups& g) {
    ToyNet net = ToyNet::Make(3, 16, /*bf16_bias=*/true);
    GradSync sync(net.params, g, {600, true, true});
    DistOptimizer opt(sync, {Adam(), 1});
    for (int step = 0; step < 2; ++step)
      TrainStep(net, sync, opt, rank, step, 0.01, 1.0);
    const std::string path =
        absl::StrCat(dir, "/", DistOptimizer::ShardFileName(rank));
    const at::Tensor rng = at::arange(5, at::kByte);
    auto bytes = opt.WriteShard(path, {{"rng/cpu", rng}});
    RANK_CHECK(bytes.ok(), bytes.status().ToString());
    RANK_CHECK(*bytes >= opt.StateBytes());

    ToyNet fresh = ToyNet::Make(3, 16, /*bf16_bias=*/true);
    GradSync sync2(fresh.params, g, {600, true, true});
    DistOptimizer opt2(sync2, {Adam(), 1});
    auto extra = opt2.ReadShard(path, 2);
    RANK_CHECK(extra.ok(), extra.status().ToString());
    RANK_CHECK(extra->size() == 1 && torch::equal(extra->at("rng/cpu"), rng));
    RANK_CHECK(opt2.steps() == 2);
    auto want = opt.StateTensors(), got = opt2.StateTensors();
    RANK_CHECK(want.size() == got.size() && !want.empty());
    for (const auto& [k, t] : want) RANK_CHECK(torch::equal(t, got.at(k)), k);

    // Another bucket size: refused with the file and the difference.
    ToyNet other = ToyNet::Make(3, 16, /*bf16_bias=*/true);
    GradSync sync3(other.params, g, {100000, true, true});
    DistOptimizer opt3(sync3, {Adam(), 1});
    auto bad = opt3.ReadShard(path, 2);
    RANK_CHECK(!bad.ok());
    RANK_CHECK(bad.status().code() == absl::StatusCode::kFailedPrecondition);
    const std::string msg(bad.status().message());
    RANK_CHECK(msg.find(path) != std::string::npos, msg);
    RANK_CHECK(msg.find("buckets") != std::string::npos, msg);
    // Another parameter name.
    ToyNet renamed = ToyNet::Make(3, 16, /*bf16_bias=*/true);
    renamed.params[2].name = "w0_renamed";
    GradSync sync4(renamed.params, g, {600, true, true});
    DistOptimizer opt4(sync4, {Adam(), 1});
    bad = opt4.ReadShard(path, 2);
    RANK_CHECK(!bad.ok());
    RANK_CHECK(std::string(bad.status().message()).find("w0_renamed") !=
                   std::string::npos,
               bad.status().ToString());
    return absl::OkStatus();
  });
  EXPECT_TRUE(st.ok()) << st;
  if (st.ok()) (void)RemoveTree(dir);
}

TEST(DistOptimizerTest, StageMustMatchTheGradSync) {
  ToyNet net = ToyNet::Make(2, 8, false);
  ParallelGroups single;
  GradSync sync(net.params, single, {});
  EXPECT_THROW(DistOptimizer(sync, {Adam(), 1}), c10::Error);
  EXPECT_THROW(DistOptimizer(sync, {Adam(), 2}), c10::Error);
}

}  // namespace
}  // namespace gemma
