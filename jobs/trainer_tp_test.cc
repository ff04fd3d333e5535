// The trainer under tensor parallelism, on real Gloo ranks (threads, real
// TCPStore): TP = 2 x DP = 2 on 4 ranks trains like one rank with the whole
// batch, with and without sequence parallelism; its sharded checkpoints load
// at any layout and resume exactly.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "jobs/peft_job.h"
#include "jobs/train_state.h"
#include "jobs/train_test_util.h"
#include "jobs/trainer.h"
#include "jobs/trainer_ranks_test_util.h"
#include "model/checkpoint.h"
#include "model/gemma4_checkpoint.h"
#include "model/layers.h"
#include "model/lora_adapter.h"
#include "model/weights.h"
#include "worker/comm.h"

namespace gemma {
namespace {

std::string* g_dir = nullptr;

class TrainerTpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    torch::set_num_threads(1);
    if (g_dir != nullptr) return;
    std::string tmpl = "/tmp/gemma_trainer_tp_test_XXXXXX";
    g_dir = new std::string(mkdtemp(tmpl.data()));
    auto data = WriteTinyOcrData(*g_dir + "/data", 24, 1, 64);
    ASSERT_TRUE(data.ok()) << data;
    TinyVlOptions o;  // 4 query heads, 2 KV heads: splits 2 ways
    auto model = WriteTinyVlModel(*g_dir + "/model",
                                  *g_dir + "/data/tokenizer.model", o);
    ASSERT_TRUE(model.ok()) << model;
  }

  static gemma::v1::JobSpec Spec() {
    gemma::v1::JobSpec s;
    s.set_kind(gemma::v1::JOB_KIND_SFT);
    s.mutable_model()->set_path(*g_dir + "/model");
    s.mutable_data()->set_train(*g_dir + "/data/train.jsonl");
    s.mutable_data()->set_batch_size(2);
    s.mutable_data()->set_seq_len(512);
    s.mutable_data()->set_seed(5);
    auto* o = s.mutable_optim();
    o->set_lr(2e-3);
    o->set_max_steps(3);
    o->set_warmup_steps(1);
    o->set_weight_decay(0.1);
    o->set_grad_clip(1.0);
    o->set_min_lr_ratio(0.1);
    // Adam turns summation-order noise in near-zero gradients into large
    // relative update differences at eps 1e-8 (see the DP test); 1e-6 keeps
    // that below the tolerance without hiding layout errors.
    o->set_eps(1e-6);
    return s;
  }

  static std::string Root(const std::string& name) {
    return absl::StrCat(*g_dir, "/", name, "-", getpid());
  }

  // The PEFT tests below, for peft.method `method` ("lora" or "dora").
  static void PeftAtTpTwoDpTwo(bool sequence_parallel,
                               const std::string& method);
  static void Gemma4PeftAtTpTwoEpTwo(const std::string& method);

  // `steps` steps of `spec` on tp x dp Gloo ranks (per world rank).
  static absl::StatusOr<TrainerRun> RunRanks(const gemma::v1::JobSpec& spec,
                                             const std::string& root, int tp,
                                             int dp, int steps,
                                             bool save = false) {
    TrainerRun run;
    GEMMA_RETURN_IF_ERROR(RunTrainerRanks(spec, root, ParallelLayout{tp, dp, 1},
                                          steps, &run, save,
                                          absl::Seconds(240)));
    return run;
  }
};

class TpDpTest : public TrainerTpTest,
                 public ::testing::WithParamInterface<bool> {};

// Micro batch 1 on each of 2 DP ranks x 2 TP shards equals micro batch 2 on
// one rank: losses within 1e-6, every weight shard within 1e-5 of its slice
// of the single rank's weights; the DP replicas of a shard are identical.
TEST_P(TpDpTest, TwoByTwoEqualsOneRankWithTheWholeBatch) {
  const bool sp = GetParam();
  auto one = Spec();
  auto ref = RunRanks(one, Root(sp ? "one-sp" : "one"), 1, 1, 3);
  ASSERT_TRUE(ref.ok()) << ref.status();
  auto four = one;
  four.mutable_data()->set_batch_size(1);
  four.mutable_parallel()->set_tp(2);
  four.mutable_parallel()->set_dp(2);
  four.mutable_parallel()->set_sequence_parallel(sp);
  auto got = RunRanks(four, Root(sp ? "tp2dp2-sp" : "tp2dp2"), 2, 2, 3);
  ASSERT_TRUE(got.ok()) << got.status();
  const std::vector<double>& want_losses = ref->losses[0];
  const std::map<std::string, at::Tensor>& want_weights = ref->weights[0];
  const ShardDims dims{2};  // TinyVlOptions.kv_heads
  for (int r = 0; r < 4; ++r) {
    ASSERT_EQ(got->losses[r].size(), 3u);
    for (int i = 0; i < 3; ++i) {
      EXPECT_NEAR(got->losses[r][i], want_losses[i], 1e-6 * want_losses[i])
          << "rank " << r << " step " << i + 1;
    }
    double worst = 0;
    std::string worst_name;
    for (const auto& [name, w] : got->weights[r]) {
      auto slice =
          SliceShard(name, want_weights.at(name), dims, 2, got->tp_rank[r]);
      ASSERT_TRUE(slice.ok()) << slice.status();
      ASSERT_EQ(slice->sizes(), w.sizes()) << name;
      const double d = (w - *slice).abs().max().item<double>();
      if (d > worst) worst = d, worst_name = name;
    }
    EXPECT_LE(worst, 1e-5) << "rank " << r << ": " << worst_name;
  }
  // DP replicas of one shard hold the same bits (same summed gradients).
  for (int t = 0; t < 2; ++t) {
    for (const auto& [name, w] : got->weights[t])
      EXPECT_TRUE(torch::equal(w, got->weights[2 + t].at(name))) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(SequenceParallel, TpDpTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return std::string(i.param ? "Sp" : "NoSp");
                         });

// A TP = 2 checkpoint: rank files per shard, loadable whole (TP = 1) with
// exactly the shards' values, and a resumed TP = 2 x DP = 2 run continues with
// the same losses to the bit.
TEST_F(TrainerTpTest, ShardedCheckpointLoadsAnywhereAndResumesExactly) {
  auto spec = Spec();
  spec.mutable_data()->set_batch_size(1);
  spec.mutable_parallel()->set_tp(2);
  spec.mutable_parallel()->set_dp(2);
  spec.mutable_optim()->set_max_steps(4);
  auto straight = RunRanks(spec, Root("straight"), 2, 2, 4);
  ASSERT_TRUE(straight.ok()) << straight.status();

  const std::string root = Root("resumed");
  auto first = RunRanks(spec, root, 2, 2, 2, /*save=*/true);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string step = StepDir(root, 2);
  // dp 2: the optimizer state is sharded (zero_stage 1), one file a rank.
  for (const char* f :
       {"model/manifest.json", "model/rank-00000.safetensors",
        "model/rank-00001.safetensors", "optimizer-rank-00000.safetensors",
        "optimizer-rank-00001.safetensors", "optimizer-rank-00002.safetensors",
        "optimizer-rank-00003.safetensors", "train_state.json"}) {
    EXPECT_TRUE(PathExists(absl::StrCat(step, "/", f))) << f;
  }
  // Whole, the checkpoint holds the shards side by side.
  auto whole = LoadModelWeights(step + "/model");
  ASSERT_TRUE(whole.ok()) << whole.status();
  for (int t = 0; t < 2; ++t) {
    for (const auto& [name, w] : first->weights[t]) {
      auto slice = SliceShard(name, whole->tensors.at(name), ShardDims{2}, 2,
                              first->tp_rank[t]);
      ASSERT_TRUE(slice.ok()) << slice.status();
      EXPECT_TRUE(torch::equal(*slice, w)) << name;
    }
  }
  // Resume: the trainer finds step 2 under the root and runs steps 3-4.
  auto second = RunRanks(spec, root, 2, 2, 2);
  ASSERT_TRUE(second.ok()) << second.status();
  for (int r = 0; r < 4; ++r) {
    ASSERT_EQ(second->losses[r].size(), 2u);
    for (int i = 0; i < 2; ++i) {
      EXPECT_EQ(second->losses[r][i], straight->losses[r][2 + i])
          << "rank " << r << " step " << 3 + i;
    }
    for (const auto& [name, w] : second->weights[r])
      EXPECT_TRUE(torch::equal(w, straight->weights[r].at(name))) << name;
  }
  // With the optimizer state replicated over DP, one file per TP shard.
  auto replicated = spec;
  replicated.mutable_parallel()->set_zero_stage(0);
  const std::string root0 = Root("zero0");
  ASSERT_TRUE(RunRanks(replicated, root0, 2, 2, 1, /*save=*/true).ok());
  for (const char* f :
       {"optimizer-tp00000.safetensors", "optimizer-tp00001.safetensors"}) {
    EXPECT_TRUE(PathExists(absl::StrCat(StepDir(root0, 1), "/", f))) << f;
  }
  EXPECT_FALSE(
      PathExists(StepDir(root0, 1) + "/optimizer-rank-00000.safetensors"));
  // Another TP size cannot take the optimizer state over: a clear error.
  auto other = spec;
  other.mutable_parallel()->set_tp(1);
  other.mutable_parallel()->set_dp(2);
  auto refused = RunRanks(other, root, 1, 2, 1);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("written with tp=2"),
            std::string::npos)
      << refused.status();
}

// Re-draws every adapter's A as peft initialises it (Kaiming-uniform with a =
// sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), whole, from a private generator in
// module order, each rank keeping its shard as AttachAdapters does: the same
// start on every layout. These ranks are threads sharing torch's default
// generator, which other ranks reseed and draw from (model init) while one
// attaches; model/lora_tp_test.cc checks AttachAdapters' own TP start.
void RedrawAdapters(torch::nn::Module& model, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::NoGradGuard no_grad;
  for (const auto& item : model.named_modules()) {
    auto proj = std::dynamic_pointer_cast<ProjectionImpl>(item.value());
    if (!proj) continue;
    auto lora = std::dynamic_pointer_cast<LoraAdapter>(proj->adapter());
    if (!lora) continue;
    const ProjectionSplit& split = proj->tp_split;
    const bool row = split.kind == ProjectionSplit::Kind::kRow;
    const int64_t in = row ? split.in : proj->weight.size(1);
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    torch::Tensor whole =
        torch::empty({lora->rank, in}).uniform_(-bound, bound, gen);
    lora->a.copy_(row ? ShardOf(split, whole, 1) : whole);
  }
}

// The peft job's trainer on the ranks of `layout`: `steps` steps, a
// checkpoint (with `save`), then FinishPeft (the HF PEFT export and the merge)
// when `finish`. The adapters start as RedrawAdapters draws them. Losses per
// world rank.
absl::Status RunPeftRanks(const gemma::v1::JobSpec& spec,
                          const std::string& root, ParallelLayout layout,
                          int steps, bool save, bool finish,
                          std::vector<std::vector<double>>* losses) {
  const int n = layout.tp * layout.dp;
  losses->assign(n, {});
  return RunGlooRanks(
      n,
      [&](int rank, ParallelGroups& groups) -> absl::Status {
        TrainerOptions o = PeftTrainerOptions(spec);
        auto attach = o.model_hook;
        o.model_hook = [attach](TrainModel& m) -> absl::Status {
          GEMMA_RETURN_IF_ERROR(attach(m));
          RedrawAdapters(m.module(), 17);
          return absl::OkStatus();
        };
        o.groups = groups;
        o.checkpoint_root = root;
        GEMMA_ASSIGN_OR_RETURN(auto t, Trainer::Create(std::move(o)));
        for (int i = 0; i < steps; ++i) {
          GEMMA_ASSIGN_OR_RETURN(auto s, t->Step());
          (*losses)[rank].push_back(s.loss);
        }
        if (save) GEMMA_RETURN_IF_ERROR(t->SaveCheckpoint().status());
        if (!finish) return absl::OkStatus();
        RankContext ctx;
        ctx.spec = spec;
        return FinishPeft(*t, spec, ctx);
      },
      layout, absl::Seconds(240));
}

std::map<std::string, at::Tensor> ReadTensors(const std::string& path) {
  auto t = ReadTensorFile(path);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : std::map<std::string, at::Tensor>{};
}

// Every tensor of `got` within `tol` of `want`'s (relative to its max), the
// same names; the worst error.
double ExpectSameTensors(const std::map<std::string, at::Tensor>& got,
                         const std::map<std::string, at::Tensor>& want,
                         double tol, const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  EXPECT_FALSE(want.empty()) << what;
  double worst = 0;
  for (const auto& [name, w] : want) {
    auto it = got.find(name);
    if (it == got.end()) {
      ADD_FAILURE() << what << ": no " << name;
      continue;
    }
    EXPECT_EQ(it->second.sizes(), w.sizes()) << what << ": " << name;
    if (it->second.sizes() != w.sizes()) continue;
    const double scale = std::max(w.abs().max().item<double>(), 1e-12);
    const double e = (it->second - w).abs().max().item<double>() / scale;
    EXPECT_LE(e, tol) << what << ": " << name;
    worst = std::max(worst, e);
  }
  return worst;
}

// LoRA (DoRA) at TP = 2 x DP = 2 (micro batch 1; with and without sequence
// parallelism) trains like one rank with the whole batch: losses per step
// within 1e-5 (relative); its adapter checkpoint (saved at TP 2, resumed at
// TP 2, each rank its shard) and its HF PEFT export hold the TP = 1 run's
// whole tensors (within 1e-4 of each tensor's max), and its merged model,
// sharded, the TP = 1 merged weights.
TEST_P(TpDpTest, PeftEqualsOneRankWithTheWholeBatch) {
  PeftAtTpTwoDpTwo(GetParam(), "lora");
}
TEST_P(TpDpTest, DoraEqualsOneRankWithTheWholeBatch) {
  PeftAtTpTwoDpTwo(GetParam(), "dora");
}

void TrainerTpTest::PeftAtTpTwoDpTwo(bool sequence_parallel,
                                     const std::string& method) {
  const std::string sp =
      (method == "lora" ? "" : "-" + method) + (sequence_parallel ? "-sp" : "");
  auto one = Spec();
  one.set_kind(gemma::v1::JOB_KIND_PEFT);
  one.mutable_peft()->set_method(method);
  one.mutable_peft()->set_rank(4);
  one.mutable_peft()->set_alpha(8);
  one.mutable_peft()->set_merge(true);
  one.mutable_peft()->set_export_dir(Root("peft1-hf" + sp));
  one.set_output(Root("peft1-out" + sp));
  std::vector<std::vector<double>> ref;
  ASSERT_TRUE(RunPeftRanks(one, Root("peft1" + sp), ParallelLayout{1, 1, 1}, 3,
                           /*save=*/true, /*finish=*/true, &ref)
                  .ok());

  auto four = one;
  four.mutable_data()->set_batch_size(1);
  four.mutable_parallel()->set_tp(2);
  four.mutable_parallel()->set_dp(2);
  four.mutable_parallel()->set_sequence_parallel(sequence_parallel);
  four.mutable_peft()->set_export_dir(Root("peft4-hf" + sp));
  four.set_output(Root("peft4-out" + sp));
  const std::string root = Root("peft4" + sp);
  std::vector<std::vector<double>> first, second;
  absl::Status st = RunPeftRanks(four, root, ParallelLayout{2, 2, 1}, 2,
                                 /*save=*/true, /*finish=*/false, &first);
  ASSERT_TRUE(st.ok()) << st;
  // Resumed from the TP = 2 adapter checkpoint at step 2.
  st = RunPeftRanks(four, root, ParallelLayout{2, 2, 1}, 1, /*save=*/true,
                    /*finish=*/true, &second);
  ASSERT_TRUE(st.ok()) << st;
  double loss_err = 0;
  for (int r = 0; r < 4; ++r) {
    ASSERT_EQ(first[r].size(), 2u);
    ASSERT_EQ(second[r].size(), 1u);
    const double losses[] = {first[r][0], first[r][1], second[r][0]};
    for (int i = 0; i < 3; ++i) {
      EXPECT_NEAR(losses[i], ref[0][i], 1e-5 * ref[0][i])
          << "rank " << r << " step " << i + 1;
      loss_err = std::max(loss_err, std::abs(losses[i] / ref[0][i] - 1));
    }
  }
  const double ckpt = ExpectSameTensors(
      ReadTensors(StepDir(root, 3) + "/model/adapter.safetensors"),
      ReadTensors(StepDir(Root("peft1" + sp), 3) +
                  "/model/adapter.safetensors"),
      1e-4, "adapter checkpoint");
  const double hf = ExpectSameTensors(
      ReadTensors(Root("peft4-hf" + sp) + "/adapter_model.safetensors"),
      ReadTensors(Root("peft1-hf" + sp) + "/adapter_model.safetensors"), 1e-4,
      "HF PEFT export");
  auto merged4 = LoadModelWeights(Root("peft4-out" + sp) + "/merged");
  ASSERT_TRUE(merged4.ok()) << merged4.status();
  auto merged1 = LoadModelWeights(Root("peft1-out" + sp) + "/merged");
  ASSERT_TRUE(merged1.ok()) << merged1.status();
  const double merged =
      ExpectSameTensors(merged4->tensors, merged1->tensors, 1e-4, "merged");
  std::cout << method << (sequence_parallel ? " with" : " without")
            << " sequence parallelism, worst relative errors: loss " << loss_err
            << ", checkpoint " << ckpt << ", export " << hf << ", merged "
            << merged << "\n";
  EXPECT_TRUE(
      PathExists(Root("peft4-out" + sp) + "/merged/rank-00001.safetensors"));
}

// Gemma 4 LoRA (DoRA) at the reference layout's shape, TP 2 x EP 2 folded on
// 2 ranks (a tiny VL MoE on receipts with images, whose full K=V layers have
// 1 KV head, replicated over TP): losses per step equal the TP 1 run's
// (1e-5 relative), and its HF PEFT export (no V adapters on K=V layers) and
// merged model hold the TP 1 run's tensors (1e-4 of each tensor's max).
TEST_F(TrainerTpTest, Gemma4PeftAtTpTwoEpTwoEqualsOneRank) {
  Gemma4PeftAtTpTwoEpTwo("lora");
}
TEST_F(TrainerTpTest, Gemma4DoraAtTpTwoEpTwoEqualsOneRank) {
  Gemma4PeftAtTpTwoEpTwo("dora");
}

void TrainerTpTest::Gemma4PeftAtTpTwoEpTwo(const std::string& method) {
  const std::string dir = *g_dir + "/g4";
  const std::string p = method == "lora" ? "g4peft" : "g4" + method;
  if (!PathExists(dir + "/model/config.json")) {
    ASSERT_TRUE(MakeDirs(dir).ok());
    auto tok = WriteTinyGemma4Tokenizer(dir + "/tokenizer.model",
                                        *g_dir + "/data/train.jsonl");
    ASSERT_TRUE(tok.ok()) << tok;
    TinyMoeOptions o;
    o.vision = true;  // the receipts come with images
    auto model = WriteTinyMoeModel(dir + "/model", dir + "/tokenizer.model", o);
    ASSERT_TRUE(model.ok()) << model;
  }
  auto one = Spec();
  one.set_kind(gemma::v1::JOB_KIND_PEFT);
  one.mutable_model()->set_path(dir + "/model");
  one.mutable_peft()->set_method(method);
  one.mutable_peft()->set_rank(4);
  one.mutable_peft()->set_alpha(8);
  one.mutable_peft()->set_merge(true);
  one.mutable_peft()->set_export_dir(Root(p + "1-hf"));
  one.set_output(Root(p + "1-out"));
  std::vector<std::vector<double>> ref, got;
  absl::Status st = RunPeftRanks(one, Root(p + "1"), ParallelLayout{1, 1, 1}, 3,
                                 /*save=*/false, /*finish=*/true, &ref);
  ASSERT_TRUE(st.ok()) << st;
  auto two = one;
  two.mutable_parallel()->set_tp(2);
  two.mutable_parallel()->set_ep(2);
  two.mutable_peft()->set_export_dir(Root(p + "2-hf"));
  two.set_output(Root(p + "2-out"));
  st = RunPeftRanks(two, Root(p + "2"), ParallelLayout{2, 1, 2}, 3,
                    /*save=*/false, /*finish=*/true, &got);
  ASSERT_TRUE(st.ok()) << st;
  double loss_err = 0;
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(got[r].size(), 3u);
    for (int i = 0; i < 3; ++i) {
      EXPECT_NEAR(got[r][i], ref[0][i], 1e-5 * ref[0][i])
          << "rank " << r << " step " << i + 1;
      loss_err = std::max(loss_err, std::abs(got[r][i] / ref[0][i] - 1));
    }
  }
  const auto exported =
      ReadTensors(Root(p + "2-hf") + "/adapter_model.safetensors");
  const double hf = ExpectSameTensors(
      exported, ReadTensors(Root(p + "1-hf") + "/adapter_model.safetensors"),
      1e-4, "HF PEFT export");
  for (const auto& [name, t] : exported) {
    // Layer 1 is a full K=V layer: no V projection, so no V adapter.
    EXPECT_EQ(name.find("layers.1.self_attn.v_proj"), std::string::npos)
        << name;
  }
  auto merged2 = LoadGemma4RankWeights(Root(p + "2-out") + "/merged",
                                       CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(merged2.ok()) << merged2.status();
  auto merged1 = LoadGemma4RankWeights(Root(p + "1-out") + "/merged",
                                       CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(merged1.ok()) << merged1.status();
  const double merged =
      ExpectSameTensors(merged2->tensors, merged1->tensors, 1e-4, "merged");
  std::cout << "Gemma 4 " << method
            << " at TP 2 x EP 2, worst relative errors: loss " << loss_err
            << ", export " << hf << ", merged " << merged << "\n";
}

}  // namespace
}  // namespace gemma
