// `gemmactl local peft-merge` / `peft-export` as real processes on an adapter
// checkpoint: the merged checkpoint gives the adapted model's logits, the
// exported folder loaded by the real `peft` (tests/parity/peft_check.py) gives
// them too, and a checkpoint applied to another base model fails naming the
// file. The binary is gemmactl-local (what `gemmactl local ...` execs).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/checkpoint.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "model/safetensors_torch.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using ::testing::HasSubstr;

std::string DataDir() {
  if (const char* env = std::getenv("GEMMA_PARITY_DATA")) return env;
  return std::string(GEMMA_BINARY_DIR) + "/parity_data";
}

std::string Bin() {
  const char* env = std::getenv("GEMMA_BIN_DIR");
  return std::string(env ? env : GEMMA_BINARY_DIR "/bin") + "/gemmactl-local";
}

std::string ReadText(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs `cmd`, stdout to `out`, stderr to `err`; returns the exit status.
int RunCmd(const std::string& cmd, const std::string& out,
           const std::string& err) {
  const int rc = std::system((cmd + " > " + out + " 2> " + err).c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::map<std::string, torch::Tensor> ReadAll(const std::string& path) {
  std::map<std::string, torch::Tensor> out;
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return out;
  for (const auto& t : (*file)->tensors()) {
    auto v = TensorView(*file, t.name);
    if (v.ok()) out[t.name] = v->clone();
  }
  return out;
}

ModelInputs Inputs(const std::string& fixture) {
  auto m = ReadAll(fixture + "/inputs.safetensors");
  ModelInputs in;
  in.input_ids = m.at("input_ids");
  if (m.count("attention_mask")) in.attention_mask = m["attention_mask"];
  if (m.count("pixel_values")) in.pixel_values = m["pixel_values"];
  if (m.count("token_type_ids")) in.token_type_ids = m["token_type_ids"];
  return in;
}

double RelDiff(const torch::Tensor& a, const torch::Tensor& ref) {
  return ((a - ref).abs().max() / ref.abs().max()).item<double>();
}

TEST(PeftCliTest, MergeAndExportAnAdapterCheckpoint) {
  const std::string fixture = DataDir() + "/vl_one_image";
  const std::string base = fixture + "/hf";
  const std::string work =
      absl::StrCat(GEMMA_BINARY_DIR, "/peft_cli_tmp.", getpid());
  ASSERT_TRUE(RemoveTree(work).ok());
  ASSERT_TRUE(MakeDirs(work).ok());

  // A trained-looking DoRA adapter checkpoint on text and vision projections.
  auto loaded = LoadModel(base);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  Gemma3Model model = *loaded;
  model->eval();
  gemma::v1::PeftSpec spec;
  spec.set_method("dora");
  spec.set_rank(4);
  spec.set_alpha(8);
  for (const char* t :
       {"qkv", "o", "gate_up", "down", "vision.qkv", "vision.fc2"}) {
    spec.add_target_modules(t);
  }
  ASSERT_TRUE(AttachAdapters(model, spec).ok());
  {
    torch::manual_seed(23);
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : AdapterParameters(model)) {
      if (absl::EndsWith(name, ".lora.b"))
        t.copy_(torch::randn(t.sizes()) * 0.1);
      if (absl::EndsWith(name, ".lora.m"))
        t.mul_(1 + 0.2 * torch::randn(t.sizes()));
    }
  }
  const std::string adapter = work + "/adapter";
  ASSERT_TRUE(SaveAdapterCheckpoint(adapter, model, spec, base, 7).ok());
  const ModelInputs in = Inputs(fixture);
  torch::Tensor adapted;
  {
    torch::NoGradGuard no_grad;
    adapted = model->forward(in);
  }

  // --help works.
  EXPECT_EQ(
      RunCmd(Bin() + " local peft-merge --help", work + "/o", work + "/e"), 0);
  EXPECT_THAT(ReadText(work + "/o"), HasSubstr("--adapter"));

  // peft-merge: a full checkpoint (TP=2) computing the adapted model.
  const std::string merged = work + "/merged";
  ASSERT_EQ(RunCmd(Bin() + " local peft-merge --adapter " + adapter +
                       " --out " + merged + " --tp 2 -o json",
                   work + "/merge.out", work + "/merge.err"),
            0)
      << ReadText(work + "/merge.err");
  auto j = nlohmann::json::parse(ReadText(work + "/merge.out"));
  EXPECT_EQ(j["method"], "dora");
  EXPECT_EQ(j["base"], base);
  EXPECT_TRUE(PathExists(merged + "/manifest.json"));
  auto merged_model = LoadModel(merged);
  ASSERT_TRUE(merged_model.ok()) << merged_model.status();
  EXPECT_TRUE(AdapterParameters(*merged_model).empty());
  {
    torch::NoGradGuard no_grad;
    (*merged_model)->eval();
    EXPECT_LT(RelDiff((*merged_model)->forward(in), adapted), 1e-5);
  }

  // peft-export, then the real peft on the HF model.
  const std::string exported = work + "/peft";
  ASSERT_EQ(RunCmd(Bin() + " local peft-export --adapter " + adapter +
                       " --out " + exported + " --base-name my/base -o json",
                   work + "/export.out", work + "/export.err"),
            0)
      << ReadText(work + "/export.err");
  auto cfg = nlohmann::json::parse(ReadText(exported + "/adapter_config.json"));
  EXPECT_EQ(cfg["base_model_name_or_path"], "my/base");
  EXPECT_EQ(cfg["use_dora"], true);
  const std::string logits = work + "/peft_logits.safetensors";
  const std::string py = absl::StrCat(
      GEMMA_PYTHON_EXE, " ", GEMMA_SOURCE_DIR,
      "/tests/parity/peft_check.py --hf ", base, " --adapter ", exported,
      " --inputs ", fixture, "/inputs.safetensors --out ", logits,
      " --r 4 --alpha 8 --dora --expect-modules ", 4 * 7 + 2 * 4);
  ASSERT_EQ(RunCmd(py, work + "/py.out", work + "/py.err"), 0)
      << ReadText(work + "/py.err");
  auto ref = ReadAll(logits);
  ASSERT_TRUE(ref.count("logits"));
  EXPECT_LT(RelDiff(adapted, ref["logits"]), 1e-5);
  EXPECT_GT(RelDiff(ref["base_logits"], ref["logits"]), 1e-2);

  // The checkpoint on another base model: exit 1, the file and field named.
  EXPECT_EQ(RunCmd(Bin() + " local peft-merge --adapter " + adapter +
                       " --out " + work + "/bad --base " + DataDir() +
                       "/vl_legacy_odd_heads_oov_image/hf",
                   work + "/bad.out", work + "/bad.err"),
            1);
  const std::string err = ReadText(work + "/bad.err");
  EXPECT_THAT(err, HasSubstr(adapter + "/adapter.json"));
  EXPECT_THAT(err, HasSubstr("base_shape"));
  EXPECT_FALSE(PathExists(work + "/bad"));
  // Missing flags: usage error.
  EXPECT_EQ(RunCmd(Bin() + " local peft-export --adapter " + adapter,
                   work + "/u.out", work + "/u.err"),
            2);
  RemoveTree(work).IgnoreError();
}

}  // namespace
}  // namespace gemma
