#include "jobs/peft_job.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "jobs/train_state.h"
#include "jobs/train_test_util.h"
#include "jobs/trainer.h"
#include "model/checkpoint.h"
#include "model/weights.h"

namespace gemma {
namespace {

class PeftJobTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl = "/tmp/gemma_peft_job_test_XXXXXX";
    dir_ = new std::string(mkdtemp(tmpl.data()));
    auto data = WriteTinyOcrData(*dir_ + "/data", 16, 2, 64);
    ASSERT_TRUE(data.ok()) << data;
    auto model =
        WriteTinyVlModel(*dir_ + "/model", *dir_ + "/data/tokenizer.model", {});
    ASSERT_TRUE(model.ok()) << model;
  }
  static void TearDownTestSuite() {
    if (!::testing::UnitTest::GetInstance()->Failed()) (void)RemoveTree(*dir_);
  }

  static gemma::v1::JobSpec Spec() {
    gemma::v1::JobSpec s;
    s.set_kind(gemma::v1::JOB_KIND_PEFT);
    s.mutable_model()->set_path(*dir_ + "/model");
    s.mutable_data()->set_train(*dir_ + "/data/train.jsonl");
    s.mutable_data()->set_batch_size(2);
    s.mutable_data()->set_seq_len(512);
    auto* o = s.mutable_optim();
    o->set_lr(5e-3);
    o->set_max_steps(6);
    o->set_warmup_steps(1);
    o->set_grad_clip(1.0);
    auto* p = s.mutable_peft();
    p->set_rank(4);
    p->set_alpha(8);
    p->set_dropout(0.1);  // random: the RNG state must be restored too
    return s;
  }

  static std::unique_ptr<Trainer> Make(const gemma::v1::JobSpec& spec,
                                       const std::string& root) {
    TrainerOptions o = PeftTrainerOptions(spec);
    o.checkpoint_root = root;
    auto t = Trainer::Create(std::move(o));
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? std::move(*t) : nullptr;
  }
  static std::string Root(const std::string& name) {
    return absl::StrCat(*dir_, "/", name);
  }
  static std::string* dir_;
};
std::string* PeftJobTest::dir_ = nullptr;

// Only adapters train; the base stays bit-identical. A resumed run (adapter
// checkpoint + base reference, dropout RNG restored) repeats the losses of
// an uninterrupted one to the bit.
TEST_F(PeftJobTest, AdaptersTrainBaseFrozenAndResumeIsExact) {
  const auto spec = Spec();
  auto straight = Make(spec, Root("straight"));
  ASSERT_NE(straight, nullptr);
  std::map<std::string, at::Tensor> base;
  for (auto& p : straight->module().named_parameters()) {
    if (p.key().find(".lora.") == std::string::npos &&
        p.key().find(".dora.") == std::string::npos)
      base[p.key()] = p.value().detach().clone();
  }
  for (const auto& [name, p] : straight->trainable()) {
    EXPECT_EQ(base.count(name), 0u) << name << " is a base weight";
  }
  ASSERT_FALSE(straight->trainable().empty());
  std::vector<double> losses;
  for (int i = 0; i < 6; ++i) {
    auto s = straight->Step();
    ASSERT_TRUE(s.ok()) << s.status();
    losses.push_back(s->loss);
  }
  EXPECT_LT(losses.back(), losses.front());
  for (auto& p : straight->module().named_parameters()) {
    auto it = base.find(p.key());
    if (it != base.end())
      EXPECT_TRUE(torch::equal(it->second, p.value())) << p.key();
  }

  {
    auto first = Make(spec, Root("resumed"));
    ASSERT_NE(first, nullptr);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(first->Step().ok());
    auto saved = first->SaveCheckpoint();
    ASSERT_TRUE(saved.ok()) << saved.status();
    // The checkpoint holds adapters only, and names the base.
    EXPECT_TRUE(PathExists(saved->first + "/model/adapter.json"));
    EXPECT_FALSE(PathExists(saved->first + "/model/manifest.json"));
  }
  auto resumed = Make(spec, Root("resumed"));
  ASSERT_NE(resumed, nullptr);
  ASSERT_EQ(resumed->step(), 3);
  EXPECT_EQ(resumed->state().base_model, *dir_ + "/model");
  for (int i = 3; i < 6; ++i) {
    auto s = resumed->Step();
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->loss, losses[i]) << "step " << i + 1;
  }
}

// Run + FinishPeft: adapters in spec.output, the HF PEFT export, and the
// merged full model in <output>/merged.
TEST_F(PeftJobTest, RunExportsAndMerges) {
  auto spec = Spec();
  spec.mutable_optim()->set_max_steps(2);
  spec.set_output(Root("out"));
  spec.mutable_peft()->set_merge(true);
  spec.mutable_peft()->set_export_dir(Root("hf-adapter"));
  auto t = Make(spec, Root("run"));
  ASSERT_NE(t, nullptr);
  RankContext ctx;
  ctx.spec = spec;
  ASSERT_TRUE(t->Run(ctx).ok());
  ASSERT_TRUE(FinishPeft(*t, spec, ctx).ok());
  EXPECT_TRUE(PathExists(spec.output() + "/adapter.json"));
  EXPECT_TRUE(PathExists(Root("hf-adapter") + "/adapter_config.json"));
  EXPECT_TRUE(PathExists(Root("hf-adapter") + "/adapter_model.safetensors"));
  auto merged = LoadModelWeights(spec.output() + "/merged");
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_TRUE(PathExists(spec.output() + "/merged/tokenizer.model"));
  // Merged weights are the trained model's (adapters folded in).
  for (auto& p : t->module().named_parameters()) {
    EXPECT_TRUE(torch::equal(merged->tensors.at(p.key()), p.value()))
        << p.key();
  }
}

}  // namespace
}  // namespace gemma
