// LoRA / DoRA adapters on a tiny random Gemma 3 VL: merge == adapter forward,
// gradients only reach the adapters, adapter checkpoints round-trip, and bad
// input is refused with the file and field named. The HF PEFT export is checked
// against the real `peft` in tests/parity/peft_parity_test.cc.
#include "model/lora.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "nlohmann/json.hpp"
#include "proto/spec_check.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

constexpr char kTinyVl[] = R"({
  "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
  "text_config": {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 48,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 8,
    "layer_types": ["sliding_attention", "full_attention"]},
  "vision_config": {"hidden_size": 16, "intermediate_size": 24,
    "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28,
    "patch_size": 7},
  "mm_tokens_per_image": 4, "image_token_index": 120, "boi_token_index": 118,
  "eoi_token_index": 119})";

Gemma3Model TinyModel(const std::string& config_text = kTinyVl,
                      uint64_t seed = 7) {
  auto config = ParseModelConfigText(config_text, "tiny");
  EXPECT_TRUE(config.ok()) << config.status();
  Gemma3Model model(*config);
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) {
    p.copy_(torch::randn(p.sizes()) * 0.1);
  }
  model->eval();
  return model;
}

ModelInputs TinyInputs(const ModelConfig& c) {
  std::vector<int64_t> ids = {2, 5, 9, 11, c.boi_token_id};
  for (int i = 0; i < c.mm_tokens_per_image; ++i)
    ids.push_back(c.image_token_id);
  for (int64_t t : {c.eoi_token_id, int64_t{17}, int64_t{23}, int64_t{42}}) {
    ids.push_back(t);
  }
  ModelInputs in;
  in.input_ids = torch::tensor(ids).view({1, -1});
  in.token_type_ids = (in.input_ids == c.image_token_id).to(torch::kLong);
  torch::manual_seed(3);
  in.pixel_values =
      torch::rand({1, 3, c.vision->image_size, c.vision->image_size}) * 2 - 1;
  return in;
}

gemma::v1::PeftSpec Spec(const std::string& method,
                         std::vector<std::string> targets = {}) {
  gemma::v1::PeftSpec spec;
  spec.set_method(method);
  spec.set_rank(4);
  spec.set_alpha(8);
  for (auto& t : targets) spec.add_target_modules(t);
  return spec;
}

const std::vector<std::string> kAllTargets = {
    "qkv",        "o",        "gate_up",    "down",
    "vision.qkv", "vision.o", "vision.fc1", "vision.fc2"};

// Non-zero B (and a magnitude away from ||W||) so adapters change the output.
void RandomiseAdapters(Gemma3Model& model, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : AdapterParameters(model)) {
    if (absl::EndsWith(name, ".lora.b")) t.copy_(torch::randn(t.sizes()) * 0.2);
    if (absl::EndsWith(name, ".lora.m"))
      t.mul_(1 + 0.2 * torch::randn(t.sizes()));
  }
}

double RelDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max()).item<double>();
}

std::string TempDir(const std::string& tag) {
  std::string d =
      absl::StrCat(GEMMA_BINARY_DIR, "/lora_test_tmp/", tag, ".", getpid());
  EXPECT_TRUE(RemoveTree(d).ok());
  EXPECT_TRUE(MakeDirs(d).ok());
  return d;
}

class LoraMethodTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LoraMethodTest, FreshAdaptersLeaveTheOutputUnchanged) {
  Gemma3Model model = TinyModel();
  ModelInputs in = TinyInputs(model->config());
  torch::NoGradGuard no_grad;
  torch::Tensor base = model->forward(in);
  ASSERT_TRUE(AttachAdapters(model, Spec(GetParam(), kAllTargets)).ok());
  // B = 0 (and m = ||W||_row for DoRA): the adapted model is the base model.
  EXPECT_LT(RelDiff(model->forward(in), base), 1e-6);
}

TEST_P(LoraMethodTest, MergeEqualsAdapterForward) {
  Gemma3Model model = TinyModel();
  ModelInputs in = TinyInputs(model->config());
  torch::Tensor base;
  {
    torch::NoGradGuard no_grad;
    base = model->forward(in);
  }
  ASSERT_TRUE(AttachAdapters(model, Spec(GetParam(), kAllTargets)).ok());
  RandomiseAdapters(model, 11);
  torch::NoGradGuard no_grad;
  torch::Tensor adapted = model->forward(in);
  ASSERT_GT(RelDiff(adapted, base), 1e-2) << "adapters must change the output";
  ASSERT_TRUE(MergeAdapters(model).ok());
  EXPECT_TRUE(AdapterParameters(model).empty());
  EXPECT_EQ(model->text->layers[0]
                ->as<Gemma3DecoderLayerImpl>()
                ->attn->qkv->adapter(),
            nullptr);
  torch::Tensor merged = model->forward(in);
  EXPECT_LT(RelDiff(merged, adapted), 1e-5);
}

TEST_P(LoraMethodTest, GradientsReachOnlyAdaptersAndStepLeavesBaseUntouched) {
  Gemma3Model model = TinyModel();
  ModelInputs in = TinyInputs(model->config());
  ASSERT_TRUE(AttachAdapters(model, Spec(GetParam(), kAllTargets)).ok());
  RandomiseAdapters(model, 5);
  model->train();
  std::map<std::string, torch::Tensor> before;
  for (const auto& item : model->named_parameters()) {
    before[item.key()] = item.value().detach().clone();
  }
  auto adapters = AdapterParameters(model);
  std::vector<torch::Tensor> params;
  for (auto& [name, t] : adapters) params.push_back(t);
  // 8 targets x 2 layers, a + b (+ m) each.
  EXPECT_EQ(adapters.size(), 16u * (GetParam() == "dora" ? 3 : 2));
  torch::optim::SGD opt(params, torch::optim::SGDOptions(0.1));
  torch::Tensor logits = model->forward(in);
  torch::Tensor probe = torch::randn(logits.sizes());
  (logits * probe).mean().backward();
  for (const auto& item : model->named_parameters()) {
    const bool is_adapter = absl::StrContains(item.key(), ".lora.");
    EXPECT_EQ(item.value().requires_grad(), is_adapter) << item.key();
    if (is_adapter) {
      ASSERT_TRUE(item.value().grad().defined()) << item.key();
      EXPECT_GT(item.value().grad().abs().max().item<double>(), 0)
          << item.key();
    } else {
      EXPECT_FALSE(item.value().grad().defined()) << item.key();
    }
  }
  opt.step();
  for (const auto& item : model->named_parameters()) {
    const bool is_adapter = absl::StrContains(item.key(), ".lora.");
    EXPECT_EQ(torch::equal(item.value(), before[item.key()]), !is_adapter)
        << item.key();
  }
}

TEST_P(LoraMethodTest, CheckpointRoundTrip) {
  Gemma3Model model = TinyModel();
  ModelInputs in = TinyInputs(model->config());
  ASSERT_TRUE(
      AttachAdapters(model, Spec(GetParam(), {"qkv", "down", "vision.fc1"}))
          .ok());
  RandomiseAdapters(model, 9);
  const std::string dir = TempDir("ckpt_" + GetParam()) + "/adapter";
  ASSERT_TRUE(SaveAdapterCheckpoint(
                  dir, model, Spec(GetParam(), {"qkv", "down", "vision.fc1"}),
                  "/models/base", 42)
                  .ok());
  EXPECT_FALSE(PathExists(absl::StrCat(dir, ".tmp.", getpid())));
  Gemma3Model fresh = TinyModel();
  auto info = LoadAdapterCheckpoint(dir, fresh);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->base_model, "/models/base");
  EXPECT_EQ(info->step, 42);
  EXPECT_EQ(info->spec.method(), GetParam());
  EXPECT_EQ(info->spec.target_modules_size(), 3);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(fresh->forward(in), model->forward(in)));
  auto a = AdapterParameters(model), b = AdapterParameters(fresh);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, LoraMethodTest,
                         ::testing::Values("lora", "dora"));

TEST(LoraTest, DropoutOnlyInTrainMode) {
  Gemma3Model model = TinyModel();
  ModelInputs in = TinyInputs(model->config());
  auto spec = Spec("lora", {"qkv", "o"});
  spec.set_dropout(0.5);
  ASSERT_TRUE(AttachAdapters(model, spec).ok());
  RandomiseAdapters(model, 2);
  torch::NoGradGuard no_grad;
  model->eval();
  EXPECT_TRUE(torch::equal(model->forward(in), model->forward(in)));
  model->train();
  EXPECT_GT(RelDiff(model->forward(in), model->forward(in)), 1e-4);
}

TEST(LoraTest, BadTargetNameNamesTheField) {
  Gemma3Model model = TinyModel();
  auto st = AttachAdapters(model, Spec("lora", {"qkv", "q_proj"}));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("peft.target_modules[1]"));
  EXPECT_THAT(st.message(), HasSubstr("q_proj"));
  EXPECT_TRUE(AdapterParameters(model).empty());
  gemma::v1::PeftSpec bad = Spec("lora");
  bad.set_method("ia3");
  EXPECT_THAT(AttachAdapters(model, bad).message(), HasSubstr("peft.method"));
  bad = Spec("lora");
  bad.set_dropout(1.5);
  EXPECT_THAT(AttachAdapters(model, bad).message(), HasSubstr("peft.dropout"));
}

TEST(LoraTest, VisionTargetOnTextOnlyModelIsRefused) {
  const std::string text = R"({"model_type": "gemma3_text", "vocab_size": 64,
    "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8})";
  Gemma3Model model = TinyModel(text);
  auto st = AttachAdapters(model, Spec("lora", {"vision.fc1"}));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("text-only"));
  EXPECT_TRUE(AttachAdapters(model, Spec("dora")).ok());
  EXPECT_EQ(AdapterParameters(model).size(), 4u * 3);
}

TEST(LoraTest, CheckpointOfAnotherBaseModelIsRefused) {
  Gemma3Model model = TinyModel();
  ASSERT_TRUE(AttachAdapters(model, Spec("lora")).ok());
  const std::string dir = TempDir("mismatch") + "/adapter";
  ASSERT_TRUE(SaveAdapterCheckpoint(dir, model, Spec("lora"), "base").ok());
  std::string other = kTinyVl;
  other.replace(other.find("\"intermediate_size\": 48"), 23,
                "\"intermediate_size\": 40");
  Gemma3Model wrong = TinyModel(other);
  auto st = LoadAdapterCheckpoint(dir, wrong).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr(dir + "/adapter.json"));
  EXPECT_THAT(
      st.message(),
      HasSubstr("projections.text.layers.0.mlp.down.base_shape: [32, 48]"));
  EXPECT_TRUE(AdapterParameters(wrong).empty());
  for (const auto& p : wrong->parameters()) EXPECT_TRUE(p.requires_grad());
}

TEST(LoraTest, CheckpointWithMisShapedTensorIsRefused) {
  Gemma3Model model = TinyModel();
  ASSERT_TRUE(AttachAdapters(model, Spec("lora", {"o"})).ok());
  const std::string dir = TempDir("badrank") + "/adapter";
  ASSERT_TRUE(
      SaveAdapterCheckpoint(dir, model, Spec("lora", {"o"}), "base").ok());
  // Claim another rank than the stored tensors have.
  const std::string cfg = dir + "/adapter.json";
  std::ifstream f(cfg);
  auto doc = nlohmann::json::parse(f);
  f.close();
  doc["peft"]["rank"] = 2;
  std::ofstream(cfg) << doc.dump();
  Gemma3Model fresh = TinyModel();
  auto st = LoadAdapterCheckpoint(dir, fresh).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr(dir + "/adapter.safetensors"));
  EXPECT_THAT(st.message(), HasSubstr("text.layers.0.attn.o.lora.a"));
  EXPECT_TRUE(AdapterParameters(fresh).empty());
  // A missing field.
  doc["peft"].erase("target_modules");
  std::ofstream(cfg) << doc.dump();
  st = LoadAdapterCheckpoint(dir, fresh).status();
  EXPECT_THAT(st.message(), HasSubstr("adapter.json: peft.target_modules"));
  EXPECT_EQ(LoadAdapterCheckpoint(dir + "/nope", fresh).status().code(),
            absl::StatusCode::kNotFound);
}

// The submit-time check (proto/spec_check.h, no LibTorch) and ResolvePeftSpec
// accept and refuse the same peft fields.
TEST(LoraTest, SubmitTimeCheckAgreesWithResolvePeftSpec) {
  gemma::v1::JobSpec job;
  job.set_kind(gemma::v1::JOB_KIND_PEFT);
  job.mutable_model()->set_path("/m");
  job.mutable_data()->set_train("/d.jsonl");
  job.mutable_optim()->set_lr(2e-4);
  job.mutable_optim()->set_max_steps(10);
  *job.mutable_peft() = Spec("dora", kAllTargets);
  EXPECT_TRUE(ValidateJobSpec(job).ok()) << ValidateJobSpec(job);
  EXPECT_TRUE(ResolvePeftSpec(job.peft()).ok());
  auto both_refuse = [&](const std::string& field) {
    auto a = ValidateJobSpec(job);
    auto b = ResolvePeftSpec(job.peft()).status();
    EXPECT_THAT(a.message(), HasSubstr("spec." + field)) << a;
    EXPECT_THAT(b.message(), HasSubstr(field)) << b;
  };
  job.mutable_peft()->add_target_modules("vision.proj");
  both_refuse("peft.target_modules[8]");
  *job.mutable_peft() = Spec("ia3");
  both_refuse("peft.method");
  *job.mutable_peft() = Spec("lora");
  job.mutable_peft()->set_dropout(1.0);
  both_refuse("peft.dropout");
}

}  // namespace
}  // namespace gemma
