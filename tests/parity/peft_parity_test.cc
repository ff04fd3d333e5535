// HF PEFT export against the real `peft` (venv): a tiny random HF Gemma 3
// (the parity fixtures of make_reference.py, saved by transformers) is loaded
// into our model, adapters with random non-zero B (and magnitudes, DoRA) are
// attached and exported; tests/parity/peft_check.py loads the folder with
// PeftModel.from_pretrained on the same HF model and its logits must equal
// ours:  max |ours - peft| <= 1e-5 * max |peft|. The adapter gradients of
// mean(logits * probe) must equal peft's too (2e-5 per tensor; peft's lora_A
// grads summed over the q/k/v or gate/up parts that share our one A), which
// pins DoRA's detached norm.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/checkpoint.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "model/safetensors_torch.h"
#include "model/weights.h"

namespace gemma {
namespace {

constexpr double kTolerance = 1e-5;
// Adapter gradients: max |ours - peft| <= this * max |peft|, per tensor.
constexpr double kGradTolerance = 2e-5;

std::string DataDir() {
  if (const char* env = std::getenv("GEMMA_PARITY_DATA")) return env;
  return std::string(GEMMA_BINARY_DIR) + "/parity_data";
}

struct PeftCase {
  std::string name;
  std::string fixture;  // make_reference.py case folder
  std::string method;
  std::vector<std::string> targets;
  int expect_modules;  // HF modules peft must adapt
};

std::ostream& operator<<(std::ostream& os, const PeftCase& c) {
  return os << c.name;
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

class PeftExportTest : public ::testing::TestWithParam<PeftCase> {};

TEST_P(PeftExportTest, PeftLoadsTheExportAndGivesOurLogits) {
  const PeftCase& c = GetParam();
  const std::string dir = DataDir() + "/" + c.fixture;
  auto loaded = LoadModel(dir + "/hf");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  Gemma3Model model = *loaded;
  model->eval();

  gemma::v1::PeftSpec spec;
  spec.set_method(c.method);
  spec.set_rank(4);
  spec.set_alpha(6);
  spec.set_dropout(0.1);  // inactive in eval mode on both sides
  for (const auto& t : c.targets) spec.add_target_modules(t);
  ASSERT_TRUE(AttachAdapters(model, spec).ok());
  {
    torch::manual_seed(17);
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : AdapterParameters(model)) {
      if (absl::EndsWith(name, ".lora.b"))
        t.copy_(torch::randn(t.sizes()) * 0.1);
      if (absl::EndsWith(name, ".lora.m"))
        t.mul_(1 + 0.2 * torch::randn(t.sizes()));
    }
  }

  auto in_map = ReadAll(dir + "/inputs.safetensors");
  ModelInputs in;
  in.input_ids = in_map.at("input_ids");
  if (in_map.count("attention_mask"))
    in.attention_mask = in_map["attention_mask"];
  if (in_map.count("pixel_values")) in.pixel_values = in_map["pixel_values"];
  if (in_map.count("token_type_ids"))
    in.token_type_ids = in_map["token_type_ids"];
  torch::Tensor ours;
  {
    torch::NoGradGuard no_grad;
    ours = model->forward(in);
  }

  const std::string work = absl::StrCat(GEMMA_BINARY_DIR, "/peft_parity_tmp/",
                                        c.name, ".", getpid());
  ASSERT_TRUE(RemoveTree(work).ok());
  ASSERT_TRUE(MakeDirs(work).ok());
  const std::string exported = work + "/adapter";
  auto st = ExportPeftAdapter(model, spec, exported, dir + "/hf");
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_TRUE(PathExists(exported + "/adapter_config.json"));
  EXPECT_TRUE(PathExists(exported + "/adapter_model.safetensors"));

  // Our gradients of mean(logits * probe) w.r.t. the adapters (eval mode: no
  // dropout), exported in peft's layout for peft_check.py to compare.
  const std::string grads = work + "/grads", probe_file = work + "/probe.st";
  {
    torch::manual_seed(29);
    const torch::Tensor probe = torch::randn(ours.sizes());
    SafetensorsWriter writer;
    ASSERT_TRUE(AddTensor(writer, "probe", probe).ok());
    ASSERT_TRUE(writer.Write(probe_file).ok());
    model->zero_grad();
    (model->forward(in) * probe).mean().backward();
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

  const std::string out = work + "/peft_logits.safetensors";
  const std::string cmd = absl::StrCat(
      GEMMA_PYTHON_EXE, " ", GEMMA_SOURCE_DIR, "/tests/parity/peft_check.py",
      " --hf ", dir, "/hf --adapter ", exported, " --inputs ", dir,
      "/inputs.safetensors --out ", out, " --r 4 --alpha 6",
      c.method == "dora" ? " --dora" : "", " --expect-modules ",
      c.expect_modules, " --grads ", grads, " --probe ", probe_file,
      " --grad-tol ", kGradTolerance, " > ", work, "/peft_check.log 2>&1");
  if (std::system(cmd.c_str()) != 0) {
    std::ifstream log(work + "/peft_check.log");
    std::stringstream text;
    text << log.rdbuf();
    FAIL() << cmd << "\n" << text.str();
  }
  auto ref = ReadAll(out);
  ASSERT_TRUE(ref.count("logits"));
  const torch::Tensor peft = ref["logits"];
  const torch::Tensor base = ref["base_logits"];
  ASSERT_EQ(ours.sizes(), peft.sizes());
  const double scale = peft.abs().max().item<double>();
  const double diff = (ours - peft).abs().max().item<double>();
  const double effect = (peft - base).abs().max().item<double>();
  std::cout << c.name << ": max|ours - peft| / max|peft| = " << diff / scale
            << ", adapter effect " << effect / scale << "; peft_check: " <<
      [&] {
        std::ifstream log(work + "/peft_check.log");
        std::string line, last;
        while (std::getline(log, line)) last = line;
        return last;
      }() << "\n";
  EXPECT_GT(effect, 1e-2 * scale) << "the adapters must change the logits";
  EXPECT_LE(diff, kTolerance * scale);
  RemoveTree(work).IgnoreError();
}

const std::vector<std::string> kText = {};  // default: qkv, o, gate_up, down
const std::vector<std::string> kAll = {"qkv",        "o",          "gate_up",
                                       "down",       "vision.qkv", "vision.o",
                                       "vision.fc1", "vision.fc2"};

// Modules adapted: text layers x 7 (q, k, v, o, gate, up, down), vision
// layers x 6 (q, k, v, out, fc1, fc2).
INSTANTIATE_TEST_SUITE_P(
    Cases, PeftExportTest,
    ::testing::Values(
        PeftCase{"lora_text", "vl_one_image", "lora", kText, 4 * 7},
        PeftCase{"dora_text", "vl_one_image", "dora", kText, 4 * 7},
        PeftCase{"lora_vision", "vl_two_images_batch2", "lora", kAll,
                 4 * 7 + 2 * 6},
        PeftCase{"dora_vision_odd_heads", "vl_legacy_odd_heads_oov_image",
                 "dora", kAll, 5 * 7 + 2 * 6},
        // Only the vision q/k/v and the text MLP: target_modules must be a
        // regex, since "q_proj" alone would also pick the text attention.
        PeftCase{"lora_vision_qkv_only",
                 "vl_one_image",
                 "lora",
                 {"vision.qkv", "gate_up"},
                 2 * 3 + 4 * 2},
        PeftCase{"dora_text_only_model", "text_softcap_batch2", "dora", kText,
                 4 * 7}),
    [](const ::testing::TestParamInfo<PeftCase>& info) {
      return info.param.name;
    });

}  // namespace
}  // namespace gemma
