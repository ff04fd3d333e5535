// LoRA / DoRA on the Gemma 4 MoE model (model/lora.h with
// Gemma4AdapterLayout) against the real `peft` on transformers 5.17.
//
// The tiny random HF Gemma 4 models of make_reference_gemma4.py (text-only
// Gemma4ForCausalLM with K=V full-attention layers 2 and 3; VL
// Gemma4ForConditionalGeneration with a 2-layer vision tower) are loaded into
// our Gemma4Model, adapters with random non-zero B (and perturbed magnitudes,
// DoRA) are attached and exported; tests/parity/peft_check.py loads the folder
// with PeftModel.from_pretrained on the same HF model (no missing / unexpected
// keys, every value loaded, the expected number of modules adapted) and its
// logits must equal ours: max |ours - peft| <= 1e-4 * max |peft| (fp32), and
// the adapter gradients of mean(logits * probe) peft's (2e-5 per tensor;
// 1e-3 for DoRA on VL, see kVlDoraGradTolerance).
// Further: no v_proj adapter on K=V layers, merge == adapter forward (1e-5),
// adapter checkpoints round-trip, bad target names are refused.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/checkpoint.h"
#include "model/gemma4_model.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "model/safetensors_torch.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using ::testing::HasSubstr;

constexpr double kTolerance = 1e-4;
constexpr double kGradTolerance = 2e-5;
// DoRA on the VL model: the gradients are ill-conditioned in fp32 there;
// peft's own fp32 gradients are up to 5e-4 from their fp64 values (ours
// 2e-4), so ours and peft's can only agree to about 1e-3.
constexpr double kVlDoraGradTolerance = 1e-3;
constexpr double kMergeTolerance = 1e-5;

std::string DataDir() {
  const char* env = std::getenv("GEMMA_PARITY_DATA");
  return env != nullptr ? env : GEMMA_BINARY_DIR "/parity_data_gemma4";
}

std::map<std::string, torch::Tensor> ReadAll(const std::string& path) {
  std::map<std::string, torch::Tensor> out;
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return out;
  for (const auto& t : (*file)->tensors()) {
    auto v = TensorView(*file, t.name);
    EXPECT_TRUE(v.ok()) << v.status();
    if (v.ok()) out[t.name] = v->clone();
  }
  return out;
}

double RelErr(const torch::Tensor& got, const torch::Tensor& ref) {
  const double scale = ref.abs().max().item<double>();
  return (got - ref).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

// A fixture case: our model, our inputs and the same inputs under HF's
// forward keyword names (for peft_check.py).
struct Case {
  Gemma4Model model{nullptr};
  Gemma4Inputs inputs;
  std::map<std::string, torch::Tensor> hf_inputs;
};

Case LoadCase(const std::string& name) {
  Case c;
  const std::string dir = DataDir() + "/" + name;
  auto model = LoadGemma4Model(dir + "/hf");
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return c;
  c.model = *model;
  c.model->eval();
  auto io = ReadAll(dir + "/io.safetensors");
  c.inputs.input_ids = io.at("input_ids");
  c.hf_inputs["input_ids"] = io.at("input_ids");
  if (io.count("attention_mask")) {
    c.inputs.attention_mask = io.at("attention_mask");
    c.hf_inputs["attention_mask"] = io.at("attention_mask");
  }
  if (io.count("pixel_values")) {
    const int64_t image_token = c.model->config().image_token_id;
    c.inputs.pixel_values = io.at("pixel_values");
    c.inputs.image_positions = io.at("image_positions");
    c.hf_inputs["pixel_values"] = io.at("pixel_values");
    c.hf_inputs["image_position_ids"] = io.at("image_positions");
    c.hf_inputs["mm_token_type_ids"] =
        (io.at("input_ids") == image_token).to(torch::kLong);
  }
  return c;
}

gemma::v1::PeftSpec Spec(const std::string& method,
                         const std::vector<std::string>& targets) {
  gemma::v1::PeftSpec spec;
  spec.set_method(method);
  spec.set_rank(4);
  spec.set_alpha(6);
  spec.set_dropout(0.1);  // inactive in eval mode on both sides
  for (const auto& t : targets) spec.add_target_modules(t);
  return spec;
}

// B ~ 0.1 N(0, 1) so the adapters matter; DoRA magnitudes perturbed by 20%.
void RandomiseAdapters(Gemma4Model& model, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : AdapterParameters(model)) {
    if (absl::EndsWith(name, ".lora.b")) t.copy_(torch::randn(t.sizes()) * 0.1);
    if (absl::EndsWith(name, ".lora.m"))
      t.mul_(1 + 0.2 * torch::randn(t.sizes()));
  }
}

std::string WorkDir(const std::string& name) {
  const std::string work =
      absl::StrCat(GEMMA_BINARY_DIR, "/peft_gemma4_tmp/", name, ".", getpid());
  EXPECT_TRUE(RemoveTree(work).ok());
  EXPECT_TRUE(MakeDirs(work).ok());
  return work;
}

std::string ReadText(const std::string& path) {
  std::ifstream f(path);
  std::stringstream text;
  text << f.rdbuf();
  return text.str();
}

struct PeftCase {
  std::string name;
  std::string fixture;  // make_reference_gemma4.py case folder
  std::string method;
  std::vector<std::string> targets;
  int expect_modules;  // HF modules peft must adapt
  // Adapter gradients: max |ours - peft| <= this * max |peft|, per tensor.
  double grad_tol = kGradTolerance;
};

std::ostream& operator<<(std::ostream& os, const PeftCase& c) {
  return os << c.name;
}

class PeftGemma4Test : public ::testing::TestWithParam<PeftCase> {};

TEST_P(PeftGemma4Test, PeftLoadsTheExportAndGivesOurLogits) {
  const PeftCase& pc = GetParam();
  Case c = LoadCase(pc.fixture);
  ASSERT_TRUE(c.model);
  Gemma4Model& model = c.model;
  const gemma::v1::PeftSpec spec = Spec(pc.method, pc.targets);
  ASSERT_TRUE(AttachAdapters(model, spec).ok());
  RandomiseAdapters(model, 17);
  torch::Tensor ours;
  {
    torch::NoGradGuard no_grad;
    ours = model->forward(c.inputs);
  }

  const std::string work = WorkDir(pc.name);
  const std::string exported = work + "/adapter";
  const std::string hf = DataDir() + "/" + pc.fixture + "/hf";
  auto st = ExportPeftAdapter(model, spec, exported, hf);
  ASSERT_TRUE(st.ok()) << st;

  // The export itself: q/k but no v adapter on the K=V layers (HF has no
  // v_proj there), v on the sliding ones; no expert, router or embedder keys.
  auto keys = ReadAll(exported + "/adapter_model.safetensors");
  const Gemma4TextConfig& tc = model->config().text;
  const bool qkv = pc.targets.empty() ||
                   std::count(pc.targets.begin(), pc.targets.end(), "qkv");
  const std::string text_prefix = model->config().is_vl()
                                      ? "base_model.model.model.language_model."
                                      : "base_model.model.model.";
  for (int64_t i = 0; i < tc.num_layers; ++i) {
    const bool k_eq_v =
        tc.attention_k_eq_v && tc.layer_types[i] == LayerType::kFull;
    const std::string attn =
        absl::StrCat(text_prefix, "layers.", i, ".self_attn.");
    EXPECT_EQ(keys.count(attn + "q_proj.lora_A.weight"), qkv ? 1u : 0u) << i;
    EXPECT_EQ(keys.count(attn + "k_proj.lora_B.weight"), qkv ? 1u : 0u) << i;
    EXPECT_EQ(keys.count(attn + "v_proj.lora_B.weight"),
              qkv && !k_eq_v ? 1u : 0u)
        << i;
    if (k_eq_v) {
      for (const auto& [k, v] : keys) {
        EXPECT_FALSE(absl::StrContains(k, attn + "v_proj")) << k;
      }
    }
  }
  for (const auto& [k, v] : keys) {
    EXPECT_FALSE(absl::StrContains(k, "experts")) << k;
    EXPECT_FALSE(absl::StrContains(k, "router")) << k;
    EXPECT_FALSE(absl::StrContains(k, "embed")) << k;
  }

  // Our gradients of mean(logits * probe), exported in peft's layout.
  const std::string grads = work + "/grads", probe_file = work + "/probe.st";
  {
    torch::manual_seed(29);
    const torch::Tensor probe = torch::randn(ours.sizes());
    SafetensorsWriter writer;
    ASSERT_TRUE(AddTensor(writer, "probe", probe).ok());
    ASSERT_TRUE(writer.Write(probe_file).ok());
    model->zero_grad();
    (model->forward(c.inputs) * probe).mean().backward();
    auto params = AdapterParameters(model);
    std::vector<torch::Tensor> saved;
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : params) {
      ASSERT_TRUE(t.grad().defined()) << name;
      saved.push_back(t.detach().clone());
      t.copy_(t.grad());
    }
    ASSERT_TRUE(ExportPeftAdapter(model, spec, grads, "").ok());
    for (size_t i = 0; i < params.size(); ++i) params[i].second.copy_(saved[i]);
  }
  const std::string inputs_file = work + "/inputs.safetensors";
  {
    SafetensorsWriter writer;
    for (const auto& [name, t] : c.hf_inputs) {
      ASSERT_TRUE(AddTensor(writer, name, t.contiguous()).ok());
    }
    ASSERT_TRUE(writer.Write(inputs_file).ok());
  }

  const std::string out = work + "/peft_logits.safetensors";
  const std::string cmd = absl::StrCat(
      GEMMA_PYTHON_EXE, " ", GEMMA_SOURCE_DIR, "/tests/parity/peft_check.py",
      " --hf ", hf, " --adapter ", exported, " --inputs ", inputs_file,
      " --out ", out, " --r 4 --alpha 6", pc.method == "dora" ? " --dora" : "",
      " --expect-modules ", pc.expect_modules, " --grads ", grads, " --probe ",
      probe_file, " --grad-tol ", pc.grad_tol, " > ", work,
      "/peft_check.log 2>&1");
  if (std::system(cmd.c_str()) != 0) {
    FAIL() << cmd << "\n" << ReadText(work + "/peft_check.log");
  }
  auto ref = ReadAll(out);
  ASSERT_TRUE(ref.count("logits"));
  const torch::Tensor peft = ref["logits"], base = ref["base_logits"];
  ASSERT_EQ(ours.sizes(), peft.sizes());
  const double diff = RelErr(ours, peft), effect = RelErr(base, peft);
  std::string last;  // peft_check.py's summary line
  {
    std::ifstream log(work + "/peft_check.log");
    for (std::string line; std::getline(log, line);) last = line;
  }
  std::cout << pc.name << ": max|ours - peft| / max|peft| = " << diff
            << ", adapter effect " << effect << "; peft_check: " << last
            << "\n";
  const auto cfg =
      nlohmann::json::parse(std::ifstream(exported + "/adapter_config.json"));
  EXPECT_EQ(cfg["auto_mapping"]["base_model_class"],
            model->config().is_vl() ? "Gemma4ForConditionalGeneration"
                                    : "Gemma4ForCausalLM");
  if (model->config().is_vl()) {
    // A regex: bare leaf names would also pick the vision tower's
    // Gemma4ClippableLinear wrappers, which peft cannot wrap.
    EXPECT_TRUE(cfg["target_modules"].is_string()) << cfg["target_modules"];
  }
  EXPECT_GT(effect, 1e-2) << "the adapters must change the logits";
  EXPECT_LE(diff, kTolerance);
  RemoveTree(work).IgnoreError();
}

const std::vector<std::string> kText = {};  // default: qkv, o, gate_up, down
const std::vector<std::string> kAll = {
    "qkv",        "o",        "gate_up",        "down",
    "vision.qkv", "vision.o", "vision.gate_up", "vision.down"};

// Text modules adapted: 2 sliding layers x 7 (q, k, v, o, gate, up, down) +
// 2 K=V full layers x 6 (no v); vision layers x 7 (q, k, v, o, gate, up, down).
INSTANTIATE_TEST_SUITE_P(
    Cases, PeftGemma4Test,
    ::testing::Values(
        PeftCase{"lora_text", "gemma4_text", "lora", kText, 2 * 7 + 2 * 6},
        PeftCase{"dora_text", "gemma4_text", "dora", kText, 2 * 7 + 2 * 6},
        PeftCase{"lora_vl_all", "gemma4_vl", "lora", kAll,
                 2 * 7 + 2 * 6 + 2 * 7},
        PeftCase{"dora_vl_all", "gemma4_vl", "dora", kAll,
                 2 * 7 + 2 * 6 + 2 * 7, kVlDoraGradTolerance},
        // Only the vision q/k/v and the text MLP.
        PeftCase{"lora_vl_vision_qkv_and_text_mlp",
                 "gemma4_vl",
                 "lora",
                 {"vision.qkv", "gate_up", "down"},
                 2 * 3 + 4 * 3}),
    [](const ::testing::TestParamInfo<PeftCase>& info) {
      return info.param.name;
    });

// ---- merge, checkpoints, bad input
// -------------------------------------------

class Gemma4AdapterTest : public ::testing::TestWithParam<std::string> {};

// Merging folds s B A (DoRA: m / ||W + s B A||) into W. The merged model's
// logits equal the adapted ones within 1e-5 (fp32) or, where the model itself
// amplifies fp32 rounding more than that, within four times its rounding
// floor (and 1e-4): the largest change of the base logits when every weight
// is perturbed by about one ulp (the VL model, vision tower -> soft tokens ->
// MoE decoder, moves by 1e-5..4e-5 so; the text model by ~2e-6).
TEST_P(Gemma4AdapterTest, MergeEqualsAdapterForward) {
  for (const char* fixture : {"gemma4_text", "gemma4_vl"}) {
    Case c = LoadCase(fixture);
    ASSERT_TRUE(c.model);
    const bool vl = c.model->config().is_vl();
    ASSERT_TRUE(
        AttachAdapters(c.model, Spec(GetParam(), vl ? kAll : kText)).ok());
    RandomiseAdapters(c.model, 5);
    torch::NoGradGuard no_grad;
    const torch::Tensor adapted = c.model->forward(c.inputs);
    const size_t n_params = c.model->parameters().size();
    ASSERT_TRUE(MergeAdapters(c.model).ok());
    EXPECT_TRUE(AdapterParameters(c.model).empty());
    EXPECT_LT(c.model->parameters().size(), n_params);
    const torch::Tensor merged = c.model->forward(c.inputs);
    const double err = RelErr(merged, adapted);
    Case base = LoadCase(fixture);
    const torch::Tensor plain = base.model->forward(base.inputs);
    EXPECT_GT(RelErr(plain, adapted), 1e-2);
    double floor = 0;  // the largest of three ulp-sized perturbations
    for (int trial = 0; trial < 3; ++trial) {
      Case noisy = LoadCase(fixture);
      for (auto& p : noisy.model->parameters()) {
        p.mul_(1 + 1.2e-7 * torch::randn(p.sizes()));
      }
      floor =
          std::max(floor, RelErr(noisy.model->forward(noisy.inputs), plain));
    }
    std::cout << fixture << ": max|merged - adapted| / max|adapted| = " << err
              << ", fp32 rounding floor " << floor << "\n";
    EXPECT_LE(err, std::max(kMergeTolerance, 4 * floor)) << fixture;
    EXPECT_LE(err, 1e-4) << fixture;
  }
}

TEST_P(Gemma4AdapterTest, CheckpointRoundTripAndOnlyAdaptersTrain) {
  Case c = LoadCase("gemma4_vl");
  ASSERT_TRUE(c.model);
  const auto spec = Spec(GetParam(), {"qkv", "vision.down"});
  ASSERT_TRUE(AttachAdapters(c.model, spec).ok());
  RandomiseAdapters(c.model, 9);
  for (const auto& item : c.model->named_parameters()) {
    EXPECT_EQ(item.value().requires_grad(),
              absl::StrContains(item.key(), ".lora."))
        << item.key();
  }
  // qkv and qk both count as "qkv"; four text layers, two vision layers.
  std::set<std::string> projections;
  for (const auto& [name, t] : AdapterParameters(c.model)) {
    projections.insert(name.substr(0, name.find(".lora.")));
  }
  EXPECT_THAT(projections,
              ::testing::ElementsAre(
                  "text.layers.0.attn.qkv", "text.layers.1.attn.qkv",
                  "text.layers.2.attn.qk", "text.layers.3.attn.qk",
                  "vision.layers.0.mlp.down", "vision.layers.1.mlp.down"));
  const std::string dir = WorkDir("ckpt_" + GetParam()) + "/adapter";
  ASSERT_TRUE(SaveAdapterCheckpoint(dir, c.model, spec, "base", 3).ok());
  Case fresh = LoadCase("gemma4_vl");
  auto info = LoadAdapterCheckpoint(dir, fresh.model);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->step, 3);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(c.model->forward(c.inputs),
                           fresh.model->forward(fresh.inputs)));
  // The same checkpoint on the text-only model: no such vision projections.
  Case text = LoadCase("gemma4_text");
  auto st = LoadAdapterCheckpoint(dir, text.model).status();
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(AdapterParameters(text.model).empty());
}

INSTANTIATE_TEST_SUITE_P(Methods, Gemma4AdapterTest,
                         ::testing::Values("lora", "dora"));

TEST(Gemma4AdapterBadInputTest, UnknownTargetNamesTheField) {
  Case c = LoadCase("gemma4_vl");
  ASSERT_TRUE(c.model);
  // Gemma 3's SigLIP names are no Gemma 4 targets; nor are the experts.
  for (const char* bad : {"vision.fc1", "experts", "q_proj"}) {
    auto st = AttachAdapters(c.model, Spec("lora", {"qkv", "o", bad}));
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(st.message(), HasSubstr("peft.target_modules[2]"));
    EXPECT_THAT(st.message(), HasSubstr(bad));
    EXPECT_THAT(st.message(), HasSubstr("vision.gate_up"));  // the known list
  }
  EXPECT_TRUE(AdapterParameters(c.model).empty());
  Case text = LoadCase("gemma4_text");
  auto st = AttachAdapters(text.model, Spec("lora", {"vision.qkv"}));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("text-only"));
}

TEST(Gemma4AdapterBadInputTest, LayoutOfAPlainModule) {
  Case c = LoadCase("gemma4_text");
  ASSERT_TRUE(c.model);
  torch::nn::Module& module = *c.model;
  auto layout = AdapterLayoutOf(module);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->family, "Gemma 4");
  ASSERT_TRUE(AttachAdapters(module, *layout, Spec("lora", {"o"})).ok());
  EXPECT_EQ(AdapterParameters(module).size(), 2u * 4);
  auto bad = AdapterLayoutOf(*c.model->text);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gemma
