// The trainer on a Gemma 4 mixture-of-experts model under expert
// parallelism, on real Gloo ranks (threads, real TCPStore): EP = 2 x DP = 2
// and EP = 4 x DP = 4 train like one rank with the whole batch (losses, and
// every rank's experts equal to its slice of the one-rank experts), the
// replicas of an expert agree to the bit, and the router's load is reported.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "data/dataset.h"
#include "jobs/eval.h"
#include "jobs/generate_job.h"
#include "jobs/peft_job.h"
#include "jobs/train_test_util.h"
#include "jobs/trainer.h"
#include "jobs/trainer_ranks_test_util.h"
#include "model/checkpoint.h"
#include "model/gemma4_checkpoint.h"
#include "model/gemma4_model.h"
#include "model/hf_mapping_gemma4.h"
#include "worker/comm.h"

namespace gemma {
namespace {

std::string* g_dir = nullptr;
constexpr int kExperts = 4;

// Text-only conversations: copy and reverse tasks over short words.
void WriteTextData(const std::string& path, int n) {
  std::ofstream out(path);
  const char* words[] = {"total", "cash", "change", "item", "price",
                         "tax",   "date", "store",  "card", "sum"};
  for (int i = 0; i < n; ++i) {
    std::string q, a;
    for (int k = 0; k < 3 + i % 4; ++k) {
      const std::string w = words[(i * 7 + k * 3) % 10];
      q += (k ? " " : "") + w;
      a = w + (k ? " " : "") + a;
    }
    out << "{\"messages\": [{\"role\": \"user\", \"content\": \"reverse: " << q
        << "\"}, {\"role\": \"assistant\", \"content\": \"" << a << "\"}]}\n";
  }
}

class TrainerEpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    torch::set_num_threads(1);
    if (g_dir != nullptr) return;
    std::string tmpl = "/tmp/gemma_trainer_ep_test_XXXXXX";
    g_dir = new std::string(mkdtemp(tmpl.data()));
    ASSERT_EQ(mkdir((*g_dir + "/data").c_str(), 0755), 0);
    WriteTextData(*g_dir + "/data/text.jsonl", 32);
    auto tok = WriteTinyGemma4Tokenizer(*g_dir + "/data/tokenizer.model",
                                        *g_dir + "/data/text.jsonl");
    ASSERT_TRUE(tok.ok()) << tok;
    TinyMoeOptions o;
    o.experts = kExperts;
    auto model = WriteTinyMoeModel(*g_dir + "/model",
                                   *g_dir + "/data/tokenizer.model", o);
    ASSERT_TRUE(model.ok()) << model;
    // The VL variant on receipt images (data/synth.h), with a Gemma 4
    // tokenizer trained on those conversations.
    auto ocr = WriteTinyOcrData(*g_dir + "/ocr", 8, 2, 64);
    ASSERT_TRUE(ocr.ok()) << ocr;
    auto vl_tok = WriteTinyGemma4Tokenizer(*g_dir + "/ocr/g4.model",
                                           *g_dir + "/ocr/train.jsonl");
    ASSERT_TRUE(vl_tok.ok()) << vl_tok;
    o.vision = true;
    auto vl =
        WriteTinyMoeModel(*g_dir + "/vl-model", *g_dir + "/ocr/g4.model", o);
    ASSERT_TRUE(vl.ok()) << vl;
  }

  static gemma::v1::JobSpec Spec() {
    gemma::v1::JobSpec s;
    s.set_kind(gemma::v1::JOB_KIND_SFT);
    s.mutable_model()->set_path(*g_dir + "/model");
    s.mutable_data()->set_train(*g_dir + "/data/text.jsonl");
    s.mutable_data()->set_batch_size(1);
    s.mutable_data()->set_seq_len(128);
    s.mutable_data()->set_seed(3);
    auto* o = s.mutable_optim();
    o->set_lr(3e-3);
    o->set_max_steps(3);
    o->set_warmup_steps(1);
    o->set_weight_decay(0.1);
    o->set_grad_clip(1.0);
    o->set_eps(1e-6);  // see trainer_tp_test.cc
    return s;
  }

  static std::string Root(const std::string& name) {
    return absl::StrCat(*g_dir, "/", name, "-", getpid());
  }
};

bool IsExpert(const std::string& name) {
  return absl::StrContains(name, ".moe.experts.");
}

// Three steps of `base` on one rank with `layout.dp` micro batches
// accumulated (`ref`), and on `layout`'s tp x dp ranks with one micro batch
// each (`got`; with `recompute` only there): every rank's losses equal the
// reference's within 1e-5 relative.
void RunOneAndMany(const gemma::v1::JobSpec& base, ParallelLayout layout,
                   bool recompute, bool save, const std::string& root_one,
                   const std::string& root_many, TrainerRun* ref,
                   TrainerRun* got) {
  auto one = base;
  one.mutable_optim()->set_grad_accum(layout.dp);
  auto st = RunTrainerRanks(one, root_one, ParallelLayout{1, 1, 1}, 3, ref);
  ASSERT_TRUE(st.ok()) << st;
  auto many = base;
  many.mutable_parallel()->set_tp(layout.tp);
  many.mutable_parallel()->set_dp(layout.dp);
  many.mutable_parallel()->set_ep(layout.ep);
  many.mutable_model()->set_recompute(recompute);
  st = RunTrainerRanks(many, root_many, layout, 3, got, save,
                       absl::Seconds(240));
  ASSERT_TRUE(st.ok()) << st;
  for (int r = 0; r < layout.tp * layout.dp; ++r) {
    ASSERT_EQ(got->losses[r].size(), 3u);
    for (int i = 0; i < 3; ++i) {
      EXPECT_NEAR(got->losses[r][i], ref->losses[0][i],
                  1e-5 * ref->losses[0][i])
          << "rank " << r << " step " << i + 1;
    }
  }
}

// Micro batch 1 with 4 accumulation steps on one rank against micro batch 1
// on each of 4 ranks (EP x DP = 4 in total).
// With `recompute` only the EP run recomputes its layers in backward.
void CheckAgainstOneRank(const gemma::v1::JobSpec& base, int ep, int dp,
                         const std::string& root_one,
                         const std::string& root_many, bool recompute = false) {
  TrainerRun ref, got;
  RunOneAndMany(base, ParallelLayout{1, dp, ep}, recompute, /*save=*/false,
                root_one, root_many, &ref, &got);
  if (::testing::Test::HasFatalFailure()) return;
  const auto& want = ref.weights[0];
  // Training moved the experts (the comparison is not between two untouched
  // models).
  auto initial =
      LoadGemma4RankWeights(base.model().path(), CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(initial.ok()) << initial.status();
  const std::string probe = "text.layers.0.moe.experts.down";
  EXPECT_GT(
      (want.at(probe) - initial->tensors.at(probe)).abs().max().item<double>(),
      1e-4);
  const int64_t per_rank = kExperts / ep;
  for (int r = 0; r < dp; ++r) {
    const int ep_rank = r % ep;
    double worst = 0;
    std::string worst_name;
    int experts_seen = 0;
    for (const auto& [name, w] : got.weights[r]) {
      at::Tensor expect = want.at(name);
      if (IsExpert(name)) {
        ++experts_seen;
        expect = expect.narrow(0, ep_rank * per_rank, per_rank);
      }
      ASSERT_EQ(expect.sizes(), w.sizes()) << name;
      const double d = (w - expect).abs().max().item<double>();
      if (d > worst) worst = d, worst_name = name;
    }
    EXPECT_GT(experts_seen, 0);
    EXPECT_LE(worst, 2e-5) << "rank " << r << ": " << worst_name;
  }
  // Ranks holding the same experts (same EP rank) agree to the bit, and every
  // rank agrees on the replicated weights.
  for (int r = ep; r < dp; ++r) {
    for (const auto& [name, w] : got.weights[r]) {
      const int same = IsExpert(name) ? r % ep : 0;
      EXPECT_TRUE(torch::equal(w, got.weights[same].at(name)))
          << name << " rank " << r;
    }
  }
}

TEST_F(TrainerEpTest, TwoByTwoEqualsOneRankWithTheWholeBatch) {
  CheckAgainstOneRank(Spec(), 2, 2, Root("one-2x2"), Root("ep2dp2"));
}

TEST_F(TrainerEpTest, EpFourEqualsOneRank) {
  CheckAgainstOneRank(Spec(), 4, 4, Root("one-4"), Root("ep4dp4"));
}

// ZeRO-1 shards the expert optimizer state over the expert-data-parallel
// group: EP = 2 x DP = 4 has 2 replicas per expert.
TEST_F(TrainerEpTest, ExpertStateShardedOverExpertDataParallelRanks) {
  auto spec = Spec();
  spec.mutable_parallel()->set_zero_stage(1);
  CheckAgainstOneRank(spec, 2, 4, Root("one-2x4"), Root("ep2dp4"));
}

// The VL model on receipts with images (Gemma 4 patches, variable soft
// tokens, bidirectional image blocks on sliding layers): EP = 2 x DP = 2
// equals one rank, and the vision tower trains.
TEST_F(TrainerEpTest, VlModelWithImagesUnderExpertParallelism) {
  auto spec = Spec();
  spec.mutable_model()->set_path(*g_dir + "/vl-model");
  spec.mutable_data()->set_train(*g_dir + "/ocr/train.jsonl");
  spec.mutable_data()->set_seq_len(512);
  CheckAgainstOneRank(spec, 2, 2, Root("one-vl"), Root("ep2dp2-vl"));
  TrainerOptions o;
  o.spec = spec;
  o.checkpoint_root = Root("vl-one-step");
  auto t = Trainer::Create(o);
  ASSERT_TRUE(t.ok()) << t.status();
  std::map<std::string, at::Tensor> before;
  for (auto& p : (*t)->module().named_parameters())
    before[p.key()] = p.value().detach().clone();
  for (int i = 0; i < 2; ++i) {  // the first step's rate is 0 (warmup)
    auto step = (*t)->Step();
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_GT(step->tokens, 0);
  }
  int vision_moved = 0;
  for (auto& p : (*t)->module().named_parameters()) {
    if (absl::StartsWith(p.key(), "vision.") &&
        !torch::equal(p.value(), before.at(p.key())))
      ++vision_moved;
  }
  EXPECT_GT(vision_moved, 0);
}

// Tensor parallelism with EP folded over the TP ranks: tp x dp ranks (ep of
// them per EP group) train like one rank with the whole batch. The saved
// checkpoint (one file per rank of max(tp, ep)) loads whole at tp 1 / ep 1
// and equals the one-rank weights, every TP rank's shard and expert slice
// included; the ranks of another DP replica hold the same weights to the
// bit. The tiny model's full layers have one KV head (replicated over TP)
// and its vocabulary does not divide by 4 (padded embedding shards).
void CheckTpAgainstOneRank(const gemma::v1::JobSpec& base, int tp, int dp,
                           int ep, const std::string& root_one,
                           const std::string& root_many) {
  TrainerRun ref, got;
  RunOneAndMany(base, ParallelLayout{tp, dp, ep}, base.model().recompute(),
                /*save=*/true, root_one, root_many, &ref, &got);
  if (::testing::Test::HasFatalFailure()) return;
  const std::string model_dir = got.saved[0] + "/model";
  auto reader = CheckpointReader::Open(model_dir, /*verify_checksums=*/true);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->manifest().layout().tp, tp);
  EXPECT_EQ((*reader)->manifest().layout().ep, ep);
  EXPECT_EQ((*reader)->manifest().files.size(),
            static_cast<size_t>(std::max(tp, ep)));
  auto whole = LoadGemma4RankWeights(model_dir, CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const auto& want = ref.weights[0];
  double worst = 0;
  std::string worst_name;
  for (const auto& [name, w] : want) {
    const double d =
        (whole->tensors.at(name).to(torch::kFloat) - w).abs().max().item<double>();
    if (d > worst) worst = d, worst_name = name;
  }
  EXPECT_LE(worst, 2e-5) << worst_name;
  // Training moved the weights (not a comparison of untouched models).
  auto initial = LoadGemma4RankWeights(base.model().path(),
                                       CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(initial.ok()) << initial.status();
  for (const char* probe : {"text.layers.1.attn.qk.weight",
                            "text.layers.0.moe.experts.down"}) {
    EXPECT_GT((want.at(probe) - initial->tensors.at(probe))
                  .abs()
                  .max()
                  .item<double>(),
              1e-4)
        << probe;
  }
  // Every rank of DP replica d holds what rank r % tp of replica 0 holds
  // (experts: the rank with the same EP index).
  for (int r = tp; r < tp * dp; ++r) {
    for (const auto& [name, w] : got.weights[r]) {
      const int same = IsExpert(name) ? r % ep : r % tp;
      EXPECT_TRUE(torch::equal(w, got.weights[same].at(name)))
          << name << " rank " << r;
    }
  }
}

TEST_F(TrainerEpTest, TpTwoEpTwoFoldedOnTwoRanks) {
  CheckTpAgainstOneRank(Spec(), 2, 1, 2, Root("one-tp2ep2"), Root("tp2ep2"));
}

TEST_F(TrainerEpTest, TpTwoDpTwoEpFour) {
  CheckTpAgainstOneRank(Spec(), 2, 2, 4, Root("one-tp2dp2ep4"),
                        Root("tp2dp2ep4"));
}

TEST_F(TrainerEpTest, TpFourWithoutExpertParallelism) {
  CheckTpAgainstOneRank(Spec(), 4, 1, 1, Root("one-tp4"), Root("tp4"));
}

// Layer recomputation under TP x EP: the TP and EP collectives and the KV
// replicas' gradient sum rerun in backward.
TEST_F(TrainerEpTest, RecomputeUnderTensorAndExpertParallelism) {
  auto spec = Spec();
  spec.mutable_model()->set_recompute(true);
  CheckTpAgainstOneRank(spec, 2, 2, 4, Root("one-tp-rc"), Root("tp2dp2ep4-rc"));
}

// The VL model under TP 2 x EP 2 (vision tower replicated over TP).
TEST_F(TrainerEpTest, VlModelUnderTensorAndExpertParallelism) {
  auto spec = Spec();
  spec.mutable_model()->set_path(*g_dir + "/vl-model");
  spec.mutable_data()->set_train(*g_dir + "/ocr/train.jsonl");
  spec.mutable_data()->set_seq_len(512);
  CheckTpAgainstOneRank(spec, 2, 1, 2, Root("one-vl-tp"), Root("tp2ep2-vl"));
}

// Layer recomputation (the all-to-alls rerun in backward) changes nothing.
TEST_F(TrainerEpTest, RecomputeUnderExpertParallelism) {
  CheckAgainstOneRank(Spec(), 2, 2, Root("one-rc"), Root("ep2dp2-rc"),
                      /*recompute=*/true);
}

// An EP = 2 x DP = 2 checkpoint: one rank file per EP rank, the model loads
// whole (EP = 1) with every rank's experts in place, and a resumed run
// continues with the uninterrupted run's losses to the bit (ZeRO-1 on both
// the dense and the expert optimizer state).
TEST_F(TrainerEpTest, CheckpointLoadsWholeAndResumesExactly) {
  auto spec = Spec();
  spec.mutable_parallel()->set_dp(2);
  spec.mutable_parallel()->set_ep(2);
  spec.mutable_parallel()->set_zero_stage(1);
  const ParallelLayout layout{1, 2, 2};
  TrainerRun straight;
  ASSERT_TRUE(
      RunTrainerRanks(spec, Root("straight"), layout, 3, &straight).ok());
  const std::string root = Root("resumed");
  TrainerRun first;
  auto st = RunTrainerRanks(spec, root, layout, 2, &first, /*save=*/true);
  ASSERT_TRUE(st.ok()) << st;
  const std::string step2 = first.saved[0];
  ASSERT_FALSE(step2.empty());
  auto whole =
      LoadGemma4RankWeights(step2 + "/model", CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(whole.ok()) << whole.status();
  for (const auto& [name, w] : first.weights[0]) {
    at::Tensor got = whole->tensors.at(name);
    if (IsExpert(name)) {
      got = got.narrow(0, 0, kExperts / 2);
      EXPECT_TRUE(torch::equal(
          whole->tensors.at(name).narrow(0, kExperts / 2, kExperts / 2),
          first.weights[1].at(name)))
          << name;
    }
    EXPECT_TRUE(torch::equal(got, w)) << name;
  }
  TrainerRun resumed;
  st = RunTrainerRanks(spec, root, layout, 1, &resumed);
  ASSERT_TRUE(st.ok()) << st;
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(resumed.start_step[r], 2);
    ASSERT_EQ(resumed.losses[r].size(), 1u);
    EXPECT_EQ(resumed.losses[r][0], straight.losses[r][2]) << "rank " << r;
    for (const auto& [name, w] : resumed.weights[r])
      EXPECT_TRUE(torch::equal(w, straight.weights[r].at(name))) << name;
  }
  // Another EP size cannot continue the optimizer state.
  auto other = spec;
  other.mutable_parallel()->set_ep(1);
  TrainerRun refused;
  st = RunTrainerRanks(other, root, ParallelLayout{1, 2, 1}, 1, &refused);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(absl::StrContains(st.message(), "ep=2")) << st;
}

// LoRA on the MoE model under EP = 2 x DP = 2 (the peft job's trainer and
// its finish): only the adapters train, the replicas agree on them, the
// export and the merged model (one rank file per EP rank) are written.
TEST_F(TrainerEpTest, PeftUnderExpertParallelism) {
  auto spec = Spec();
  spec.set_kind(gemma::v1::JOB_KIND_PEFT);
  spec.mutable_parallel()->set_dp(2);
  spec.mutable_parallel()->set_ep(2);
  spec.mutable_optim()->set_max_steps(2);
  spec.mutable_peft()->set_rank(4);
  spec.mutable_peft()->set_merge(true);
  spec.mutable_peft()->set_export_dir(Root("peft-hf"));
  spec.set_output(Root("peft-out"));
  const std::string root = Root("peft");
  std::vector<std::map<std::string, at::Tensor>> adapters(2);
  auto st = RunGlooRanks(
      2,
      [&](int rank, ParallelGroups& groups) -> absl::Status {
        TrainerOptions o = PeftTrainerOptions(spec);
        o.groups = groups;
        o.checkpoint_root = root;
        GEMMA_ASSIGN_OR_RETURN(auto t, Trainer::Create(o));
        RankContext ctx;
        ctx.spec = spec;
        GEMMA_RETURN_IF_ERROR(t->Run(ctx));
        for (auto& p : t->module().named_parameters()) {
          if (absl::StrContains(p.key(), ".lora."))
            adapters[rank][p.key()] = p.value().detach().clone();
        }
        return FinishPeft(*t, spec, ctx);
      },
      ParallelLayout{1, 2, 2}, absl::Seconds(120));
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_FALSE(adapters[0].empty());
  for (const auto& [name, a] : adapters[0])
    EXPECT_TRUE(torch::equal(a, adapters[1].at(name))) << name;
  EXPECT_TRUE(PathExists(Root("peft-hf") + "/adapter_config.json"));
  EXPECT_TRUE(PathExists(Root("peft-out") + "/adapter.json"));
  auto merged = LoadGemma4RankWeights(Root("peft-out") + "/merged", CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_TRUE(PathExists(Root("peft-out") + "/merged/rank-00001.safetensors"));
}

// The eval job on a Gemma 4 model: its loss and token accuracy equal those
// computed from the model's full logits (HF's forward, checked against
// transformers by the parity suite) with a plain log-softmax over the same
// batches, text-only and with images (the trainer's loss path builds the
// image blocks itself); generation metrics are refused by name.
void CheckEvalAgainstFullLogits(const std::string& model_dir,
                                const std::string& data_path,
                                const std::string& report_path) {
  gemma::v1::JobSpec spec;
  spec.set_kind(gemma::v1::JOB_KIND_EVAL);
  spec.mutable_model()->set_path(model_dir);
  spec.mutable_data()->set_eval(data_path);
  spec.mutable_data()->set_batch_size(4);
  spec.mutable_data()->set_seq_len(512);
  spec.mutable_eval()->set_max_batches(2);
  spec.mutable_eval()->set_report(report_path);
  RankContext ctx;
  ctx.spec = spec;
  auto st = NewEvalJob()->Run(ctx);
  ASSERT_TRUE(st.ok()) << st;
  std::ifstream in(report_path);
  const nlohmann::json report = nlohmann::json::parse(in, nullptr, false);
  ASSERT_TRUE(report.is_object());

  // The reference: the first 8 conversations, logits of the whole model.
  auto model = LoadGemma4Model(model_dir);
  ASSERT_TRUE(model.ok()) << model.status();
  (*model)->eval();
  auto tok = Tokenizer::Load(model_dir + "/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto data = ReadDataset(data_path);
  ASSERT_TRUE(data.ok()) << data.status();
  data->resize(8);
  BatchOptions bo;
  bo.batch_size = 8;
  bo.seq_len = 512;
  bo.shuffle = false;
  bo.chat.format = ChatFormat::kGemma4;
  if ((*model)->config().vision) {
    bo.gemma4_image.patch_size = (*model)->config().vision->patch_size;
    bo.gemma4_image.pooling_kernel_size =
        (*model)->config().vision->pooling_kernel_size;
    bo.gemma4_image.max_soft_tokens = 70;  // the fixture's processor config
  }
  auto loader = DataLoader::Create(*data, tok->get(), bo);
  ASSERT_TRUE(loader.ok()) << loader.status();
  auto batch = (*loader)->Next();
  ASSERT_TRUE(batch.ok()) << batch.status();
  torch::NoGradGuard no_grad;
  Gemma4Inputs gi;
  gi.input_ids = batch->input_ids;
  gi.attention_mask = batch->attention_mask;
  if (batch->pixel_values.defined() && batch->pixel_values.numel() > 0) {
    gi.pixel_values = batch->pixel_values;
    gi.image_positions = batch->image_positions;
  }
  torch::Tensor logits = (*model)->forward(gi).to(torch::kDouble);
  torch::Tensor labels = batch->labels.narrow(1, 1, batch->labels.size(1) - 1);
  torch::Tensor lp =
      torch::log_softmax(logits.narrow(1, 0, logits.size(1) - 1), -1);
  torch::Tensor valid = labels.ne(-100);
  torch::Tensor picked =
      lp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1);
  const double tokens = valid.sum().item<double>();
  const double want_loss = -(picked * valid).sum().item<double>() / tokens;
  const double want_acc =
      (lp.argmax(-1).eq(labels) & valid).sum().item<double>() / tokens;
  EXPECT_EQ(report["tokens"].get<double>(), tokens);
  EXPECT_NEAR(report["loss"].get<double>(), want_loss, 1e-5 * want_loss);
  EXPECT_NEAR(report["token_accuracy"].get<double>(), want_acc, 1e-12);

  // Generation metrics on the first conversations (images included).
  spec.mutable_eval()->set_generate_examples(3);
  spec.mutable_eval()->set_max_new_tokens(6);
  ctx.spec = spec;
  st = NewEvalJob()->Run(ctx);
  ASSERT_TRUE(st.ok()) << st;
  std::ifstream again(report_path);
  const nlohmann::json with_gen = nlohmann::json::parse(again, nullptr, false);
  ASSERT_TRUE(with_gen.contains("generation")) << with_gen.dump();
  EXPECT_EQ(with_gen["generation"]["examples"], 3);
}

// The generate job on the MoE model: its tokens are GenerateGemma4's greedy
// tokens (checked against transformers by the parity suite) for the prompt
// the Gemma 4 chat format renders, and its text their decoding.
TEST_F(TrainerEpTest, GenerateJobOnTheMoeModel) {
  gemma::v1::JobSpec spec;
  spec.set_kind(gemma::v1::JOB_KIND_GENERATE);
  spec.mutable_model()->set_path(*g_dir + "/model");
  auto* g = spec.mutable_generate();
  g->add_prompts("reverse: total cash item");
  g->add_prompts("reverse: tax");
  g->set_max_new_tokens(8);
  g->set_output(Root("gen.jsonl"));
  RankContext ctx;
  ctx.spec = spec;
  auto st = NewGenerateJob()->Run(ctx);
  ASSERT_TRUE(st.ok()) << st;
  std::ifstream in(Root("gen.jsonl"));
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);)
    rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 2u);

  auto model = LoadGemma4Model(*g_dir + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  (*model)->eval();
  auto tok = Tokenizer::Load(*g_dir + "/model/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (int i = 0; i < 2; ++i) {
    Conversation c;
    c.messages.push_back(
        {"user", {{ContentPart::Type::kText, g->prompts(i), ""}}});
    ChatOptions chat;
    chat.format = ChatFormat::kGemma4;
    chat.add_generation_prompt = true;
    auto enc = EncodeChat(**tok, c, chat, std::vector<ChatImageInfo>{});
    ASSERT_TRUE(enc.ok()) << enc.status();
    std::vector<int64_t> ids(enc->input_ids.begin(), enc->input_ids.end());
    Gemma4Inputs gi;
    gi.input_ids = torch::tensor(ids, torch::kLong).unsqueeze(0);
    GenerateOptions o;
    o.max_new_tokens = 8;
    o.stop_token_ids = {(*tok)->special().eos, (*tok)->special().turn_close};
    auto want = GenerateGemma4(*model, gi, o);
    ASSERT_TRUE(want.ok()) << want.status();
    std::vector<int64_t> got = rows[i]["tokens"].get<std::vector<int64_t>>();
    ASSERT_FALSE(got.empty());
    for (size_t k = 0; k < got.size(); ++k)
      EXPECT_EQ(got[k], want->tokens[0][k].item<int64_t>()) << i << " " << k;
  }
}

TEST_F(TrainerEpTest, EvalJobOnTheMoeModel) {
  CheckEvalAgainstFullLogits(*g_dir + "/model", *g_dir + "/data/text.jsonl",
                             Root("eval.json"));
}

TEST_F(TrainerEpTest, EvalJobOnTheVlMoeModelWithImages) {
  CheckEvalAgainstFullLogits(*g_dir + "/vl-model", *g_dir + "/ocr/train.jsonl",
                             Root("eval-vl.json"));
}

TEST_F(TrainerEpTest, RefusesEpNotDividingTheExperts) {
  auto spec = Spec();
  spec.mutable_parallel()->set_dp(3);
  spec.mutable_parallel()->set_ep(3);
  TrainerRun run;
  auto st =
      RunTrainerRanks(spec, Root("ep3"), ParallelLayout{1, 3, 3}, 1, &run);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(absl::StrContains(st.message(), "spec.parallel.ep")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "num_experts 4")) << st;
}

// The router's load over the steps since the last report: every expert gets
// tokens, and the busiest gets at least the mean.
TEST_F(TrainerEpTest, ReportsRouterLoad) {
  TrainerOptions o;
  o.spec = Spec();
  o.checkpoint_root = Root("metrics");
  auto t = Trainer::Create(o);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE((*t)->Step().ok());
  // One step is 1 micro batch: the counts are of its tokens once, recompute
  // or not.
  auto m = (*t)->model().TakeMetrics();
  ASSERT_TRUE(m.count("moe_max_load")) << m.size();
  EXPECT_GE(m["moe_max_load"], 1.0);
  EXPECT_LE(m["moe_min_load"], 1.0);
  EXPECT_GE(m["moe_min_load"], 0.0);
  // Taken: no tokens routed since, no metrics.
  EXPECT_TRUE((*t)->model().TakeMetrics().empty());
}

}  // namespace
}  // namespace gemma
