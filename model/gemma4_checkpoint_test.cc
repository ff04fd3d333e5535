// Gemma 4 in our sharded checkpoint: HF <-> ours at any EP, resharding, the
// per-EP-rank loader and the per-rank writer, on the tiny HF models the
// parity fixture (tests/parity/make_reference_gemma4.py) saves.
#include "model/gemma4_checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "model/convert.h"
#include "model/gemma4_model.h"
#include "model/safetensors.h"
#include "tests/formats/test_util.h"

namespace gemma {
namespace {

namespace fs = std::filesystem;
using ::gemma::testing::RunPython;
using ::gemma::testing::TempDir;
using ::testing::HasSubstr;

std::string DataDir() {
  const char* env = std::getenv("GEMMA_PARITY_DATA");
  return env != nullptr ? env : GEMMA_BINARY_DIR "/parity_data_gemma4";
}
std::string TextHf() { return DataDir() + "/gemma4_text/hf"; }
std::string VlHf() { return DataDir() + "/gemma4_vl/hf"; }

ConvertOptions Ep(int ep) {
  ConvertOptions o;
  o.ep = ep;
  return o;
}

// Every tensor of `a` in `b` with the same dtype, shape and bytes, and
// nothing else.
void ExpectSameSafetensors(const std::string& a, const std::string& b) {
  auto fa = SafetensorsFile::Open(a), fb = SafetensorsFile::Open(b);
  ASSERT_TRUE(fa.ok()) << fa.status();
  ASSERT_TRUE(fb.ok()) << fb.status();
  ASSERT_EQ((*fa)->tensors().size(), (*fb)->tensors().size());
  for (const TensorInfo& t : (*fa)->tensors()) {
    const TensorInfo* u = (*fb)->Find(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    EXPECT_EQ(t.dtype, u->dtype) << t.name;
    EXPECT_EQ(t.shape, u->shape) << t.name;
    auto x = (*fa)->Bytes(t), y = (*fb)->Bytes(*u);
    EXPECT_TRUE(x.size() == y.size() &&
                std::equal(x.begin(), x.end(), y.begin()))
        << t.name << " differs";
  }
}

// HF -> ours(ep 2) -> ours(ep 4) -> ours(ep 1) -> HF, bit for bit.
void RoundTrip(const std::string& hf, int64_t num_experts) {
  TempDir tmp;
  auto s = ConvertHfToCheckpoint(hf, tmp / "ep2", Ep(2));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->files, 2);
  // Replicated tensors are stored once: rank 1 holds expert slices only.
  auto r1 = SafetensorsFile::Open(tmp / "ep2/rank-00001.safetensors");
  ASSERT_TRUE(r1.ok()) << r1.status();
  for (const TensorInfo& t : (*r1)->tensors()) {
    EXPECT_THAT(t.name, HasSubstr(".moe.experts.")) << t.name;
    EXPECT_EQ(t.shape[0], num_experts / 2) << t.name;
  }
  EXPECT_LT(fs::file_size(tmp / "ep2/rank-00001.safetensors"),
            fs::file_size(tmp / "ep2/rank-00000.safetensors"));
  auto reader = CheckpointReader::Open(tmp / "ep2");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->manifest().ep, 2);
  EXPECT_EQ((*reader)->manifest().tp, 1);
  ASSERT_TRUE(ReshardCheckpoint(tmp / "ep2", tmp / "ep4", Ep(4)).ok());
  ASSERT_TRUE(ReshardCheckpoint(tmp / "ep4", tmp / "ep1", Ep(1)).ok());
  EXPECT_TRUE(fs::exists(tmp / "ep4/rank-00003.safetensors"));
  EXPECT_FALSE(fs::exists(tmp / "ep1/rank-00001.safetensors"));
  auto back = ConvertCheckpointToHf(tmp / "ep1", tmp / "hf", ConvertOptions());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameSafetensors(hf + "/model.safetensors",
                        tmp / "hf/model.safetensors");
  // Straight from ep 4 too, and the companion files travel along.
  ASSERT_TRUE(
      ConvertCheckpointToHf(tmp / "ep4", tmp / "hf4", ConvertOptions()).ok());
  ExpectSameSafetensors(hf + "/model.safetensors",
                        tmp / "hf4/model.safetensors");
  EXPECT_TRUE(fs::exists(tmp / "hf/generation_config.json"));
  EXPECT_TRUE(fs::exists(tmp / "ep4/generation_config.json"));
  // transformers loads the export and gives the original's logits.
  auto r = RunPython("check_export_gemma4.py", hf + " " + (tmp / "hf"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("check_export_gemma4: OK")) << r.output;
}

TEST(Gemma4CheckpointTest, TextRoundTripThroughEpLayoutsIsBitExact) {
  RoundTrip(TextHf(), 4);
}

TEST(Gemma4CheckpointTest, VlRoundTripThroughEpLayoutsIsBitExact) {
  RoundTrip(VlHf(), 4);
  // The export keeps the VL spelling.
  TempDir tmp;
  ASSERT_TRUE(ConvertHfToCheckpoint(VlHf(), tmp / "c", Ep(2)).ok());
  ASSERT_TRUE(ConvertCheckpointToHf(tmp / "c", tmp / "hf", {}).ok());
  auto f = SafetensorsFile::Open(tmp / "hf/model.safetensors");
  ASSERT_TRUE(f.ok());
  EXPECT_NE((*f)->Find("model.language_model.embed_tokens.weight"), nullptr);
  EXPECT_NE((*f)->Find("model.vision_tower.std_scale"), nullptr);
}

torch::Tensor Logits(Gemma4Model& m) {
  torch::NoGradGuard no_grad;
  Gemma4Inputs in;
  in.input_ids = torch::randint(
      3, 500, {2, 12}, torch::Generator(at::detail::createCPUGenerator(7)),
      torch::kLong);
  return m->forward(in);
}

TEST(Gemma4CheckpointTest, CheckpointAtEp2LoadsAtEp1WithHfLogits) {
  TempDir tmp;
  ASSERT_TRUE(ConvertHfToCheckpoint(TextHf(), tmp / "c", Ep(2)).ok());
  auto w = LoadGemma4RankWeights(tmp / "c", 1, 0);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->kind, "checkpoint");
  auto model = BuildGemma4Model(w->config, w->tensors);
  ASSERT_TRUE(model.ok()) << model.status();
  (*model)->eval();
  auto direct = LoadGemma4Model(TextHf());
  ASSERT_TRUE(direct.ok()) << direct.status();
  (*direct)->eval();
  EXPECT_TRUE(torch::equal(Logits(*model), Logits(*direct)));

  // EP rank 1 of 2 gets experts [2, 4), from the checkpoint and from HF.
  auto whole = LoadGemma4RankWeights(TextHf(), 1, 0);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->kind, "hf");
  for (const std::string& dir : {std::string(tmp / "c"), TextHf()}) {
    auto r1 = LoadGemma4RankWeights(dir, 2, 1);
    ASSERT_TRUE(r1.ok()) << r1.status();
    const std::string e = "text.layers.1.moe.experts.gate_up";
    EXPECT_EQ(r1->tensors.at(e).size(0), 2);
    EXPECT_TRUE(
        torch::equal(r1->tensors.at(e), whole->tensors.at(e).narrow(0, 2, 2)));
    EXPECT_TRUE(torch::equal(r1->tensors.at("text.embed.weight"),
                             whole->tensors.at("text.embed.weight")));
  }
}

TEST(Gemma4CheckpointTest, EpRanksWriteACheckpointReadBackAtEp1AndEp4) {
  TempDir tmp;
  auto whole = LoadGemma4RankWeights(VlHf(), 1, 0);
  ASSERT_TRUE(whole.ok()) << whole.status();
  std::vector<ManifestFile> files;
  std::map<std::string, at::Tensor> rank0;
  for (int r = 0; r < 2; ++r) {  // two "ranks", each with its own view
    auto mine = LoadGemma4RankWeights(VlHf(), 2, r);
    ASSERT_TRUE(mine.ok()) << mine.status();
    auto f = WriteGemma4RankFile(tmp / "ck", 2, r, mine->tensors);
    ASSERT_TRUE(f.ok()) << f.status();
    files.push_back(*f);
    if (r == 0) rank0 = mine->tensors;
  }
  ASSERT_TRUE(CommitGemma4Checkpoint(tmp / "ck", whole->config_json, 2, 17,
                                     rank0, files)
                  .ok());
  // The same folder a conversion at ep 2 writes.
  ASSERT_TRUE(ConvertHfToCheckpoint(VlHf(), tmp / "conv", Ep(2)).ok());
  for (const char* f : {"rank-00000.safetensors", "rank-00001.safetensors"}) {
    ExpectSameSafetensors(tmp / "conv" + "/" + f, tmp / "ck" + "/" + f);
  }
  auto at1 = LoadGemma4RankWeights(tmp / "ck", 1, 0);
  ASSERT_TRUE(at1.ok()) << at1.status();
  ASSERT_EQ(at1->tensors.size(), whole->tensors.size());
  for (const auto& [name, t] : whole->tensors) {
    EXPECT_TRUE(torch::equal(at1->tensors.at(name), t)) << name;
  }
  for (int r = 0; r < 4; ++r) {
    auto at4 = LoadGemma4RankWeights(tmp / "ck", 4, r);
    ASSERT_TRUE(at4.ok()) << at4.status();
    const std::string e = "text.layers.3.moe.experts.down";
    EXPECT_TRUE(
        torch::equal(at4->tensors.at(e), whole->tensors.at(e).narrow(0, r, 1)))
        << r;
  }
  // A replicated tensor passed by rank 1 to the generic writer is refused.
  std::vector<RankShard> bad = {
      {"text.final_norm.weight", DType::kF32, {64}, nullptr}};
  auto refused = WriteRankFile(tmp / "x", CheckpointLayout{1, 2}, 1, {1}, bad);
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status()));
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("text.final_norm.weight"));
}

TEST(Gemma4CheckpointTest, MalformedInputsGiveClearErrors) {
  TempDir tmp;
  // ep not dividing the 4 experts.
  auto s = ConvertHfToCheckpoint(TextHf(), tmp / "c3", Ep(3));
  EXPECT_TRUE(absl::IsInvalidArgument(s.status())) << s.status();
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("num_experts 4"));
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("config.json"));
  EXPECT_FALSE(fs::exists(tmp / "c3"));
  // Gemma 4 tensor parallelism is refused.
  ConvertOptions tp2;
  tp2.tp = 2;
  s = ConvertHfToCheckpoint(TextHf(), tmp / "t2", tp2);
  EXPECT_TRUE(absl::IsInvalidArgument(s.status()));
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("Gemma 4 tensor parallelism is not built yet"));
  // The split rule itself names the tensor.
  auto spec = LookupParam("text.layers.0.moe.experts.down");
  ASSERT_TRUE(spec.ok());
  auto l = ComputeLayoutShard(*spec, {4, 8, 2}, {1}, CheckpointLayout{1, 3}, 0);
  EXPECT_TRUE(absl::IsInvalidArgument(l.status()));
  EXPECT_THAT(std::string(l.status().message()),
              HasSubstr("text.layers.0.moe.experts.down"));
  // A manifest whose rank file is missing.
  ASSERT_TRUE(ConvertHfToCheckpoint(TextHf(), tmp / "c", Ep(2)).ok());
  fs::remove(tmp / "c/rank-00001.safetensors");
  auto hf = ConvertCheckpointToHf(tmp / "c", tmp / "hf", {});
  EXPECT_FALSE(hf.ok());
  EXPECT_THAT(std::string(hf.status().message()),
              HasSubstr("rank-00001.safetensors"));
  EXPECT_FALSE(fs::exists(tmp / "hf"));
  auto w = LoadGemma4RankWeights(tmp / "c", 2, 1);
  EXPECT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()),
              HasSubstr("rank-00001.safetensors"));
  // Rank 0's share does not need the missing file.
  EXPECT_TRUE(LoadGemma4RankWeights(tmp / "c", 2, 0).ok());
}

}  // namespace
}  // namespace gemma
