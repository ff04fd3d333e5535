#include "jobs/trainer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "jobs/train_state.h"
#include "jobs/train_test_util.h"
#include "jobs/trainer_ranks_test_util.h"
#include "model/checkpoint.h"
#include "model/weights.h"
#include "proto/spec_check.h"
#include "worker/comm.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

class TrainerTest : public ::testing::Test {
 protected:
  // One data set and model for every test of the binary (made once).
  static void SetUpTestSuite() {
    if (dir_ != nullptr) return;
    std::string tmpl = "/tmp/gemma_trainer_test_XXXXXX";
    dir_ = new std::string(mkdtemp(tmpl.data()));
    auto data = WriteTinyOcrData(*dir_ + "/data", 24, 1, 64);
    ASSERT_TRUE(data.ok()) << data;
    TinyVlOptions o;
    auto model =
        WriteTinyVlModel(*dir_ + "/model", *dir_ + "/data/tokenizer.model", o);
    ASSERT_TRUE(model.ok()) << model;
  }

  static gemma::v1::JobSpec Spec() {
    gemma::v1::JobSpec s;
    s.set_kind(gemma::v1::JOB_KIND_SFT);
    s.mutable_model()->set_path(*dir_ + "/model");
    s.mutable_data()->set_train(*dir_ + "/data/train.jsonl");
    s.mutable_data()->set_batch_size(2);
    s.mutable_data()->set_seq_len(512);
    s.mutable_data()->set_seed(5);
    auto* o = s.mutable_optim();
    o->set_lr(2e-3);
    o->set_max_steps(6);
    o->set_warmup_steps(2);
    o->set_weight_decay(0.1);
    o->set_grad_clip(1.0);
    o->set_min_lr_ratio(0.1);
    return s;
  }

  static std::unique_ptr<Trainer> Make(const gemma::v1::JobSpec& spec,
                                       const std::string& root) {
    TrainerOptions o;
    o.spec = spec;
    o.checkpoint_root = root;
    auto t = Trainer::Create(std::move(o));
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? std::move(*t) : nullptr;
  }

  static std::map<std::string, at::Tensor> Weights(Trainer& t) {
    std::map<std::string, at::Tensor> out;
    for (auto& p : t.module().named_parameters())
      out[p.key()] = p.value().detach().clone();
    return out;
  }

  static std::string Root(const std::string& name) {
    return absl::StrCat(*dir_, "/", name, "-", getpid());
  }

  static std::string* dir_;

 public:
  static std::string* SharedDir() { return dir_; }
};
std::string* TrainerTest::dir_ = nullptr;

// Removes the shared folder at the end unless a test failed.
class CleanUp : public ::testing::Environment {
 public:
  void TearDown() override {
    std::string* dir = TrainerTest::SharedDir();
    if (dir != nullptr && !::testing::UnitTest::GetInstance()->Failed())
      (void)RemoveTree(*dir);
  }
};
const auto* const kCleanUp = ::testing::AddGlobalTestEnvironment(new CleanUp);

class ResumeTest : public TrainerTest,
                   public ::testing::WithParamInterface<int> {};

// N steps straight vs N/2, checkpoint, a fresh trainer resuming from it, N/2
// more: every later loss identical to the bit, and so are the weights.
TEST_P(ResumeTest, ResumedLossesAreBitIdentical) {
  auto spec = Spec();
  spec.mutable_optim()->set_grad_accum(GetParam());
  const std::string straight_root = Root(absl::StrCat("straight", GetParam()));
  const std::string resumed_root = Root(absl::StrCat("resumed", GetParam()));
  auto straight = Make(spec, straight_root);
  ASSERT_NE(straight, nullptr);
  EXPECT_EQ(straight->grad_accum(), GetParam());
  std::vector<double> losses;
  for (int i = 0; i < 6; ++i) {
    auto s = straight->Step();
    ASSERT_TRUE(s.ok()) << s.status();
    losses.push_back(s->loss);
  }
  {
    auto first = Make(spec, resumed_root);
    ASSERT_NE(first, nullptr);
    for (int i = 0; i < 3; ++i) {
      auto s = first->Step();
      ASSERT_TRUE(s.ok()) << s.status();
      EXPECT_EQ(s->loss, losses[i]) << "step " << i + 1;
    }
    auto saved = first->SaveCheckpoint();
    ASSERT_TRUE(saved.ok()) << saved.status();
    EXPECT_EQ(saved->first, StepDir(resumed_root, 3));
    EXPECT_GT(saved->second, 0);
  }
  EXPECT_EQ(LatestCheckpoint(resumed_root), StepDir(resumed_root, 3));
  auto resumed = Make(spec, resumed_root);  // finds step 3 under its root
  ASSERT_NE(resumed, nullptr);
  ASSERT_EQ(resumed->step(), 3);
  EXPECT_EQ(resumed->state().losses,
            std::vector<double>(losses.begin(), losses.begin() + 3));
  for (int i = 3; i < 6; ++i) {
    auto s = resumed->Step();
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->loss, losses[i]) << "step " << i + 1;
  }
  auto a = Weights(*straight), b = Weights(*resumed);
  for (const auto& [name, t] : a) {
    EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
  }
  // The loss went down on this tiny task.
  EXPECT_LT(losses.back(), losses.front());
}

INSTANTIATE_TEST_SUITE_P(GradAccum, ResumeTest, ::testing::Values(1, 2));

// A step folder named in model.path also resumes (a new job continuing one).
TEST_F(TrainerTest, ModelPathToAStepFolderContinuesFromIt) {
  auto spec = Spec();
  const std::string root = Root("from-path");
  {
    auto t = Make(spec, root);
    ASSERT_NE(t, nullptr);
    ASSERT_TRUE(t->Step().ok());
    ASSERT_TRUE(t->Step().ok());
    ASSERT_TRUE(t->SaveCheckpoint().ok());
  }
  auto spec2 = spec;
  spec2.mutable_model()->set_path(StepDir(root, 2));
  auto t = Make(spec2, Root("from-path-new"));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->step(), 2);
  EXPECT_EQ(t->state().base_model, *dir_ + "/model");
}

// Micro batch 1 x accumulation 2 sees the rows of micro batch 2 x 1; with
// the loss normalised by the step's target tokens the losses agree.
TEST_F(TrainerTest, AccumulationMatchesTheLargerBatch) {
  auto big = Spec();
  auto small = Spec();
  small.mutable_data()->set_batch_size(1);
  small.mutable_optim()->set_grad_accum(2);
  auto a = Make(big, Root("big"));
  auto b = Make(small, Root("small"));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  for (int i = 0; i < 3; ++i) {
    auto sa = a->Step();
    auto sb = b->Step();
    ASSERT_TRUE(sa.ok() && sb.ok());
    EXPECT_EQ(sa->tokens, sb->tokens);
    EXPECT_NEAR(sa->loss, sb->loss, 1e-5 * sa->loss) << "step " << i + 1;
    EXPECT_NEAR(sa->grad_norm, sb->grad_norm, 1e-4 * sa->grad_norm);
  }
}

// Frozen parts stay bit-identical; the rest moves.
TEST_F(TrainerTest, FrozenParametersAreUntouched) {
  auto spec = Spec();
  spec.mutable_model()->add_freeze("vision");
  spec.mutable_model()->add_freeze("projector");
  auto t = Make(spec, Root("frozen"));
  ASSERT_NE(t, nullptr);
  auto before = Weights(*t);
  for (const auto& [name, p] : t->trainable()) {
    EXPECT_EQ(name.rfind("text.", 0), 0u) << name << " should be frozen";
  }
  ASSERT_TRUE(t->Step().ok());
  ASSERT_TRUE(t->Step().ok());
  auto after = Weights(*t);
  int moved = 0;
  for (const auto& [name, w] : before) {
    const bool frozen =
        name.rfind("vision.", 0) == 0 || name.rfind("projector.", 0) == 0;
    if (frozen) {
      EXPECT_TRUE(torch::equal(w, after.at(name))) << name;
    } else if (!torch::equal(w, after.at(name))) {
      ++moved;
    }
  }
  EXPECT_GT(moved, 10);

  auto bad = Spec();
  bad.mutable_model()->add_freeze("everything");
  TrainerOptions o;
  o.spec = bad;
  o.checkpoint_root = Root("bad");
  auto r = Trainer::Create(o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("spec.model.freeze"));
}

// Recomputing each decoder layer in backward gives the gradients of the
// plain backward.
TEST_F(TrainerTest, RecomputeGivesTheSameGradients) {
  auto plain_spec = Spec();
  auto re_spec = Spec();
  re_spec.mutable_model()->set_recompute(true);
  plain_spec.mutable_optim()->set_grad_clip(0);  // compare raw gradients
  re_spec.mutable_optim()->set_grad_clip(0);
  auto plain = Make(plain_spec, Root("plain"));
  auto re = Make(re_spec, Root("recompute"));
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(re, nullptr);
  auto a = plain->Step();
  auto b = re->Step();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->loss, b->loss);
  ASSERT_EQ(plain->trainable().size(), re->trainable().size());
  for (size_t i = 0; i < plain->trainable().size(); ++i) {
    const auto& [name, p] = plain->trainable()[i];
    const at::Tensor ga = p.grad(), gb = re->trainable()[i].second.grad();
    ASSERT_TRUE(ga.defined() && gb.defined()) << name;
    const double diff = (ga - gb).abs().max().item<double>();
    const double scale = ga.abs().max().item<double>();
    EXPECT_LE(diff, 1e-6 * scale + 1e-12) << name;
  }
}

// Run(): progress, validation, checkpoints through the context, the final
// model in spec.output (loadable, with its tokenizer).
TEST_F(TrainerTest, RunReportsAndWritesTheModel) {
  auto spec = Spec();
  spec.mutable_optim()->set_max_steps(4);
  spec.mutable_optim()->set_eval_interval_steps(2);
  spec.mutable_optim()->set_eval_batches(2);
  spec.mutable_data()->set_eval(*dir_ + "/data/train.jsonl");
  spec.mutable_checkpoint()->set_interval_steps(2);
  spec.set_output(Root("out"));
  auto t = Make(spec, Root("run"));
  ASSERT_NE(t, nullptr);
  RankContext ctx;
  ctx.spec = spec;
  std::vector<std::map<std::string, double>> progress;
  std::vector<std::pair<int64_t, std::string>> checkpoints;
  ctx.progress = [&](int64_t step, int64_t total,
                     const std::map<std::string, double>& m) {
    EXPECT_EQ(total, 4);
    progress.push_back(m);
  };
  ctx.checkpoint = [&](int64_t step, const std::string& path, int64_t bytes,
                       const std::map<std::string, double>& m) {
    EXPECT_GT(bytes, 0);
    checkpoints.emplace_back(step, path);
  };
  ASSERT_TRUE(t->Run(ctx).ok());
  ASSERT_EQ(progress.size(), 4u);
  for (const char* key :
       {"loss", "lr", "grad_norm", "tokens_per_s", "accuracy"})
    EXPECT_TRUE(progress[0].count(key)) << key;
  EXPECT_TRUE(progress[1].count("eval_loss"));
  EXPECT_TRUE(progress[3].count("eval_accuracy"));
  ASSERT_EQ(checkpoints.size(), 2u);
  EXPECT_EQ(checkpoints[1].first, 4);
  EXPECT_TRUE(IsTrainCheckpoint(checkpoints[1].second));
  auto state = ReadWholeFile(checkpoints[1].second + "/" + kTrainStateFile);
  ASSERT_TRUE(state.ok());
  auto parsed = TrainState::FromJson(*state, "train_state.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->step, 4);
  EXPECT_EQ(parsed->losses.size(), 4u);
  EXPECT_EQ(parsed->eval_losses.size(), 2u);
  EXPECT_TRUE(PathExists(spec.output() + "/tokenizer.model"));
  auto loaded = LoadModelWeights(spec.output());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto w = Weights(*t);
  for (const auto& [name, tensor] : loaded->tensors) {
    EXPECT_TRUE(torch::equal(tensor, w.at(name))) << name;
  }
}

// Sets an environment variable for the life of the object.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    const char* old = std::getenv(name);
    if (old != nullptr) old_ = old;
    had_ = old != nullptr;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_, old_.c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

// Data-parallel runs on 2 real Gloo ranks (threads); parameter: zero_stage.
class TrainerDpTest : public TrainerTest,
                      public ::testing::WithParamInterface<int> {
 protected:
  using DpRun = TrainerRun;
  // `steps` steps on each of 2 ranks, then (with `save`) a checkpoint.
  static absl::Status RunDp(const gemma::v1::JobSpec& spec,
                            const std::string& root, int steps, DpRun* out,
                            bool save = false) {
    return RunTrainerRanks(spec, root, ParallelLayout{1, 2, 1}, steps, out,
                           save);
  }

  static gemma::v1::JobSpec DpSpec(int zero_stage) {
    auto spec = Spec();
    spec.mutable_data()->set_batch_size(1);
    spec.mutable_parallel()->set_dp(2);
    spec.mutable_parallel()->set_zero_stage(zero_stage);
    return spec;
  }

  static void ExpectSameWeights(const std::map<std::string, at::Tensor>& a,
                                const std::map<std::string, at::Tensor>& b,
                                const std::string& what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    for (const auto& [name, w] : a)
      EXPECT_TRUE(torch::equal(w, b.at(name))) << what << ": " << name;
  }
};

// DP = 2 (real Gloo ranks in two threads) equals one rank with twice the
// micro batch: each rank reads its half of every global batch, the loss is
// normalised by the tokens of both, gradients are summed over the group;
// with the optimizer state replicated (0) or sharded (1).
TEST_P(TrainerDpTest, TwoDataParallelRanksEqualOneRankWithTwiceTheBatch) {
  auto one = Spec();  // micro batch 2
  one.mutable_optim()->set_max_steps(3);
  // Adam divides by sqrt(v) + eps: entries whose gradient is near zero turn
  // fp32 summation-order noise into full-size update differences at the
  // default eps 1e-8; a larger eps keeps that amplification below the
  // tolerance without touching what DP must get right (rows, scaling, sums).
  one.mutable_optim()->set_eps(1e-6);
  auto two = one;
  two.mutable_data()->set_batch_size(1);
  two.mutable_parallel()->set_dp(2);
  two.mutable_parallel()->set_zero_stage(GetParam());
  auto single = Make(one, Root(absl::StrCat("dp1-", GetParam())));
  ASSERT_NE(single, nullptr);
  std::vector<double> losses;
  for (int i = 0; i < 3; ++i) {
    auto s = single->Step();
    ASSERT_TRUE(s.ok()) << s.status();
    losses.push_back(s->loss);
  }
  const auto want = Weights(*single);
  std::vector<std::vector<double>> rank_losses(2);
  std::vector<std::map<std::string, at::Tensor>> rank_weights(2);
  absl::Status st =
      RunGlooRanks(2, [&](int rank, ParallelGroups& groups) -> absl::Status {
        TrainerOptions o;
        o.spec = two;
        o.groups = groups;
        o.checkpoint_root = Root(absl::StrCat("dp2-", GetParam()));
        auto t = Trainer::Create(o);
        if (!t.ok()) return t.status();
        for (int i = 0; i < 3; ++i) {
          auto s = (*t)->Step();
          if (!s.ok()) return s.status();
          rank_losses[rank].push_back(s->loss);
        }
        rank_weights[rank] = Weights(**t);
        return absl::OkStatus();
      });
  ASSERT_TRUE(st.ok()) << st;
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(rank_losses[r].size(), 3u);
    for (int i = 0; i < 3; ++i) {
      EXPECT_NEAR(rank_losses[r][i], losses[i], 1e-6 * losses[i])
          << "rank " << r << " step " << i + 1;
    }
    double worst = 0;
    std::string worst_name;
    for (const auto& [name, w] : want) {
      const double d =
          (rank_weights[r].at(name) - w).abs().max().item<double>();
      if (d > worst) {
        worst = d;
        worst_name = name;
      }
    }
    EXPECT_LE(worst, 1e-6) << "rank " << r << ": " << worst_name;
  }
  // Both ranks hold the same weights exactly (same summed gradients).
  for (const auto& [name, w] : rank_weights[0]) {
    EXPECT_TRUE(torch::equal(w, rank_weights[1].at(name))) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(ZeroStage, TrainerDpTest, ::testing::Values(0, 1));

// ZeRO-1 and the replicated optimizer give the same weights to the bit after
// 3 steps at DP = 2 (Gloo sums of 2 numbers do not depend on the order),
// with many small buckets reduced during backward.
TEST_F(TrainerDpTest, ZeroStageOneEqualsZeroStageZeroBitForBit) {
  ScopedEnv buckets("GEMMA_GRAD_BUCKET_BYTES", "16384");
  DpRun zero, one;
  ASSERT_TRUE(RunDp(DpSpec(0), Root("z0"), 3, &zero).ok());
  ASSERT_TRUE(RunDp(DpSpec(1), Root("z1"), 3, &one).ok());
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(zero.losses[r], one.losses[r]) << "rank " << r;
    ExpectSameWeights(zero.weights[r], one.weights[r],
                      absl::StrCat("rank ", r));
  }
  ExpectSameWeights(one.weights[0], one.weights[1], "ranks 0 and 1");
  // The weights moved.
  auto fresh = Make(Spec(), Root("z-fresh"));
  ASSERT_NE(fresh, nullptr);
  int moved = 0;
  for (const auto& [name, w] : Weights(*fresh))
    moved += torch::equal(w, one.weights[0].at(name)) ? 0 : 1;
  EXPECT_GT(moved, 10);
}

// Grad accumulation 2 on the overlapped path (buckets start during the
// second micro batch's backward) with a frozen vision tower: the same
// weights with either stage, frozen weights untouched, and the result close
// to one rank running micro batch 2 x accumulation 2.
TEST_F(TrainerDpTest, GradAccumulationWithAFrozenPart) {
  ScopedEnv buckets("GEMMA_GRAD_BUCKET_BYTES", "8192");
  auto spec0 = DpSpec(0);
  spec0.mutable_optim()->set_grad_accum(2);
  spec0.mutable_optim()->set_max_steps(3);
  spec0.mutable_optim()->set_eps(1e-6);  // see the test above
  spec0.mutable_model()->add_freeze("vision");
  auto spec1 = spec0;
  spec1.mutable_parallel()->set_zero_stage(1);
  DpRun zero, one;
  absl::Status st = RunDp(spec0, Root("acc-z0"), 3, &zero);
  ASSERT_TRUE(st.ok()) << st;
  st = RunDp(spec1, Root("acc-z1"), 3, &one);
  ASSERT_TRUE(st.ok()) << st;
  ExpectSameWeights(zero.weights[0], one.weights[0], "stage 0 vs 1");
  ExpectSameWeights(one.weights[0], one.weights[1], "ranks 0 and 1");

  auto single_spec = Spec();
  single_spec.mutable_optim()->set_grad_accum(2);
  single_spec.mutable_optim()->set_max_steps(3);
  single_spec.mutable_optim()->set_eps(1e-6);
  single_spec.mutable_model()->add_freeze("vision");
  auto single = Make(single_spec, Root("acc-single"));
  ASSERT_NE(single, nullptr);
  const auto before = Weights(*single);
  for (int i = 0; i < 3; ++i) {
    auto s = single->Step();
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_NEAR(one.losses[0][i], s->loss, 1e-6 * s->loss) << "step " << i;
  }
  const auto want = Weights(*single);
  int frozen = 0;
  for (const auto& [name, w] : want) {
    if (name.rfind("vision.", 0) == 0) {
      ++frozen;
      EXPECT_TRUE(torch::equal(one.weights[0].at(name), before.at(name)))
          << name;
    }
    const double d = (one.weights[0].at(name) - w).abs().max().item<double>();
    EXPECT_LE(d, 1e-6) << name;
  }
  EXPECT_GT(frozen, 0);
}

// DP = 2 with zero_stage 1: stop after 2 steps, resume from the checkpoint
// (each rank reads its own optimizer shard), and steps 3-4 give the losses
// of an uninterrupted run to the bit, and the same weights.
TEST_F(TrainerDpTest, ResumeWithShardedOptimizerIsBitIdentical) {
  ScopedEnv buckets("GEMMA_GRAD_BUCKET_BYTES", "16384");
  const auto spec = DpSpec(1);
  DpRun straight, first, resumed;
  absl::Status st = RunDp(spec, Root("z1-straight"), 4, &straight);
  ASSERT_TRUE(st.ok()) << st;
  const std::string root = Root("z1-resumed");
  st = RunDp(spec, root, 2, &first, /*save=*/true);
  ASSERT_TRUE(st.ok()) << st;
  const std::string dir = StepDir(root, 2);
  EXPECT_EQ(first.saved[0], dir);
  EXPECT_TRUE(PathExists(dir + "/optimizer-rank-00000.safetensors"));
  EXPECT_TRUE(PathExists(dir + "/optimizer-rank-00001.safetensors"));
  EXPECT_FALSE(PathExists(dir + "/" + kOptimizerFile));
  st = RunDp(spec, root, 2, &resumed);
  ASSERT_TRUE(st.ok()) << st;
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(resumed.start_step[r], 2);
    ASSERT_EQ(resumed.losses[r].size(), 2u);
    EXPECT_EQ(first.losses[r][0], straight.losses[r][0]);
    EXPECT_EQ(first.losses[r][1], straight.losses[r][1]);
    EXPECT_EQ(resumed.losses[r][0], straight.losses[r][2]) << "rank " << r;
    EXPECT_EQ(resumed.losses[r][1], straight.losses[r][3]) << "rank " << r;
    ExpectSameWeights(straight.weights[r], resumed.weights[r],
                      absl::StrCat("rank ", r));
  }
}

// A rank's optimizer shard holds about half of what the replicated
// optimizer file holds at DP = 2; a restore with another zero_stage or
// another trainable set is refused, naming the file and what differs.
TEST_F(TrainerDpTest, ShardFilesHoldHalfTheStateAndMismatchesAreRefused) {
  DpRun run0, run1;
  const std::string root0 = Root("files-z0"), root1 = Root("files-z1");
  ASSERT_TRUE(RunDp(DpSpec(0), root0, 1, &run0, true).ok());
  ASSERT_TRUE(RunDp(DpSpec(1), root1, 1, &run1, true).ok());
  auto full = ReadWholeFile(StepDir(root0, 1) + "/" + kOptimizerFile);
  ASSERT_TRUE(full.ok()) << full.status();
  for (int r = 0; r < 2; ++r) {
    auto shard = ReadWholeFile(absl::StrCat(
        StepDir(root1, 1), "/optimizer-rank-0000", r, ".safetensors"));
    ASSERT_TRUE(shard.ok()) << shard.status();
    const double ratio = static_cast<double>(shard->size()) / full->size();
    EXPECT_GT(ratio, 0.45) << "rank " << r;
    EXPECT_LT(ratio, 0.56) << "rank " << r;
  }

  // zero_stage 0 resuming a zero_stage 1 checkpoint.
  auto other = DpSpec(0);
  other.mutable_model()->set_path(StepDir(root1, 1));
  DpRun ignored;
  absl::Status st = RunDp(other, Root("files-other"), 0, &ignored);
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr(kOptimizerFile));
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("written with zero_stage 1"));
  // Another trainable set (vision frozen): the shard's layout differs.
  auto frozen = DpSpec(1);
  frozen.mutable_model()->set_path(StepDir(root1, 1));
  frozen.mutable_model()->add_freeze("vision");
  st = RunDp(frozen, Root("files-frozen"), 0, &ignored);
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("optimizer-rank-0000"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("buckets"));
}

// parallel.zero_stage is 0 or 1: the spec check and the trainer say so.
TEST_F(TrainerTest, ZeroStageIsZeroOrOne) {
  auto spec = Spec();
  for (int stage : {0, 1}) {
    spec.mutable_parallel()->set_zero_stage(stage);
    EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
  }
  spec.mutable_parallel()->set_zero_stage(2);
  EXPECT_THAT(std::string(ValidateJobSpec(spec).message()),
              HasSubstr("spec.parallel.zero_stage: must be 0 or 1, got 2"));
  TrainerOptions o;
  o.spec = spec;
  o.checkpoint_root = Root("zero-stage-2");
  auto r = Trainer::Create(o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("spec.parallel.zero_stage"));
}

TEST_F(TrainerTest, BadInputNamesTheField) {
  auto spec = Spec();
  spec.mutable_data()->set_train(*dir_ + "/missing.jsonl");
  TrainerOptions o;
  o.spec = spec;
  o.checkpoint_root = Root("bad-data");
  auto r = Trainer::Create(o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("spec.data.train"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("missing.jsonl"));

  spec = Spec();
  spec.mutable_optim()->set_max_steps(0);
  o.spec = spec;
  r = Trainer::Create(o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("optim.max_steps"));

  auto bad_state =
      TrainState::FromJson(R"({"step": 1})", "/x/train_state.json");
  ASSERT_FALSE(bad_state.ok());
  EXPECT_THAT(std::string(bad_state.status().message()),
              HasSubstr("/x/train_state.json: max_steps"));
}

}  // namespace
}  // namespace gemma
