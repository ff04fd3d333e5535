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
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "model/convert.h"
#include "model/gemma4_model.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/formats/gemma4_tiny.h"
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
  auto w = LoadGemma4RankWeights(tmp / "c", CheckpointLayout{1, 1}, 0, 0);
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
  auto whole = LoadGemma4RankWeights(TextHf(), CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->kind, "hf");
  for (const std::string& dir : {std::string(tmp / "c"), TextHf()}) {
    auto r1 = LoadGemma4RankWeights(dir, CheckpointLayout{1, 2}, 0, 1);
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
  auto whole = LoadGemma4RankWeights(VlHf(), CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(whole.ok()) << whole.status();
  std::vector<ManifestFile> files;
  std::map<std::string, at::Tensor> rank0;
  for (int r = 0; r < 2; ++r) {  // two "ranks", each with its own view
    auto mine = LoadGemma4RankWeights(VlHf(), CheckpointLayout{1, 2}, 0, r);
    ASSERT_TRUE(mine.ok()) << mine.status();
    auto f = WriteGemma4RankFile(tmp / "ck", whole->config, CheckpointLayout{1, 2}, r, mine->tensors);
    ASSERT_TRUE(f.ok()) << f.status();
    files.push_back(*f);
    if (r == 0) rank0 = mine->tensors;
  }
  ASSERT_TRUE(CommitGemma4Checkpoint(tmp / "ck", whole->config_json, whole->config, CheckpointLayout{1, 2}, 17,
                                     rank0, files)
                  .ok());
  // The same folder a conversion at ep 2 writes.
  ASSERT_TRUE(ConvertHfToCheckpoint(VlHf(), tmp / "conv", Ep(2)).ok());
  for (const char* f : {"rank-00000.safetensors", "rank-00001.safetensors"}) {
    ExpectSameSafetensors(tmp / "conv" + "/" + f, tmp / "ck" + "/" + f);
  }
  auto at1 = LoadGemma4RankWeights(tmp / "ck", CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(at1.ok()) << at1.status();
  ASSERT_EQ(at1->tensors.size(), whole->tensors.size());
  for (const auto& [name, t] : whole->tensors) {
    EXPECT_TRUE(torch::equal(at1->tensors.at(name), t)) << name;
  }
  for (int r = 0; r < 4; ++r) {
    auto at4 = LoadGemma4RankWeights(tmp / "ck", CheckpointLayout{1, 4}, 0, r);
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
  // A tp the model cannot split names the field and the config values
  // (tp 2 splits: see the TP x EP tests).
  ConvertOptions tp3;
  tp3.tp = 3;
  s = ConvertHfToCheckpoint(TextHf(), tmp / "t3", tp3);
  EXPECT_TRUE(absl::IsInvalidArgument(s.status())) << s.status();
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("tp: 3"));
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("num_attention_heads 4"));
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("config.json"));
  EXPECT_FALSE(fs::exists(tmp / "t3"));
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
  auto w = LoadGemma4RankWeights(tmp / "c", CheckpointLayout{1, 2}, 0, 1);
  EXPECT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()),
              HasSubstr("rank-00001.safetensors"));
  // Rank 0's share does not need the missing file.
  EXPECT_TRUE(LoadGemma4RankWeights(tmp / "c", CheckpointLayout{1, 2}, 0, 0).ok());
}

// ---- TP x EP (MoE parallel folding)
// ------------------------------------------

// The slice of `whole` (a global tensor under our name) that TP rank t / EP
// rank e of `l` holds, computed with torch ops straight from the rules in
// model/gemma4_checkpoint.h (independently of param_table.cc).
torch::Tensor ExpectedSlice(const std::string& name, const torch::Tensor& whole,
                            const Gemma4TextConfig& c, CheckpointLayout l,
                            int t, int e) {
  auto has = [&](const char* part) {
    return name.find(part) != std::string::npos;
  };
  if (has(".moe.experts.")) {
    const int64_t per = whole.size(0) / l.ep;
    return whole.narrow(0, e * per, per);
  }
  if (name.rfind("text.", 0) != 0 || l.tp == 1) return whole;
  const int64_t tp = l.tp;
  if (name == "text.embed.weight") {
    const int64_t v = whole.size(0), pad = (v + tp - 1) / tp * tp - v;
    return torch::cat(
               {whole, torch::zeros({pad, whole.size(1)}, whole.options())})
        .chunk(tp, 0)[t];
  }
  if (has(".attn.o.weight") || has(".mlp.down.weight"))
    return whole.chunk(tp, 1)[t];
  if (has(".mlp.gate_up.weight")) {
    auto halves = whole.chunk(2, 0);
    return torch::cat({halves[0].chunk(tp, 0)[t], halves[1].chunk(tp, 0)[t]});
  }
  if (has(".attn.qkv.weight") || has(".attn.qk.weight")) {
    const int64_t layer =
        std::stoll(name.substr(std::string("text.layers.").size()));
    const LayerType type = c.layer_types[layer];
    const int64_t nkv = c.layer_kv_heads(type), hd = c.layer_head_dim(type),
                  nq = c.num_heads, m = has(".attn.qk.") ? 1 : 2;
    auto groups = whole.view({nkv, (nq / nkv + m) * hd, whole.size(1)});
    if (nkv % tp == 0) {
      return groups.narrow(0, t * nkv / tp, nkv / tp)
          .reshape({-1, whole.size(1)});
    }
    const int64_t share = tp / nkv, g = t / share, s = t % share,
                  q = nq / tp * hd;
    return torch::cat({groups[g].narrow(0, s * q, q),
                       groups[g].narrow(0, nq / nkv * hd, m * hd)});
  }
  return whole;
}

// `got` is TP rank t / EP rank e's view of `whole` in `l`, exactly.
void ExpectRankView(const Gemma4RankWeights& whole,
                    const Gemma4RankWeights& got, CheckpointLayout l, int t,
                    int e) {
  SCOPED_TRACE(absl::StrCat("tp ", l.tp, " x ep ", l.ep, ", TP rank ", t,
                            " / EP rank ", e));
  EXPECT_EQ(got.tp_size, l.tp);
  EXPECT_EQ(got.tp_rank, t);
  EXPECT_EQ(got.ep_size, l.ep);
  EXPECT_EQ(got.ep_rank, e);
  ASSERT_EQ(got.tensors.size(), whole.tensors.size());
  for (const auto& [name, w] : whole.tensors) {
    auto it = got.tensors.find(name);
    ASSERT_NE(it, got.tensors.end()) << name;
    torch::Tensor want = ExpectedSlice(name, w, whole.config.text, l, t, e);
    EXPECT_EQ(it->second.sizes(), want.sizes()) << name;
    EXPECT_EQ(it->second.scalar_type(), want.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(it->second, want)) << name;
  }
}

ConvertOptions Layout(int tp, int ep) {
  ConvertOptions o;
  o.tp = tp;
  o.ep = ep;
  return o;
}

std::string ReadWhole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Ranks of {tp 2, ep 2} slice an HF model (LoadGemma4RankWeights), write
// their files and commit; the checkpoint reads back exactly at other layouts,
// reshards to {tp 1, ep 4} and {tp 4, ep 1}, and exports to the original HF
// bytes.
void TpEpRoundTrip(const std::string& hf) {
  TempDir tmp;
  auto whole = LoadGemma4RankWeights(hf, CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const CheckpointLayout l22{2, 2};
  ASSERT_EQ(l22.world(), 2);
  std::vector<ManifestFile> files;
  std::map<std::string, at::Tensor> rank0;
  for (int r = 0; r < l22.world(); ++r) {
    auto mine =
        LoadGemma4RankWeights(hf, l22, l22.tp_index(r), l22.ep_index(r));
    ASSERT_TRUE(mine.ok()) << mine.status();
    ExpectRankView(*whole, *mine, l22, r, r);
    auto f =
        WriteGemma4RankFile(tmp / "ck", whole->config, l22, r, mine->tensors);
    ASSERT_TRUE(f.ok()) << f.status();
    files.push_back(*f);
    if (r == 0) rank0 = mine->tensors;
  }
  ASSERT_TRUE(CommitGemma4Checkpoint(tmp / "ck", whole->config_json,
                                     whole->config, l22, 9, rank0, files)
                  .ok());
  auto m = nlohmann::json::parse(ReadWhole(tmp / "ck/manifest.json"));
  EXPECT_EQ(m["parallel"]["tp"], 2);
  EXPECT_EQ(m["parallel"]["ep"], 2);
  EXPECT_EQ(m["step"], 9);
  EXPECT_EQ(m["shard_dims"]["num_heads"], whole->config.text.num_heads);
  EXPECT_EQ(m["shard_dims"]["layer_kv_heads"].size(),
            static_cast<size_t>(whole->config.text.num_layers));
  // The same rank files a conversion at {tp 2, ep 2} writes.
  auto conv = ConvertHfToCheckpoint(hf, tmp / "conv", Layout(2, 2));
  ASSERT_TRUE(conv.ok()) << conv.status();
  EXPECT_EQ(conv->files, 2);
  for (const char* f : {"rank-00000.safetensors", "rank-00001.safetensors"})
    ExpectSameSafetensors(tmp / "conv" + "/" + f, tmp / "ck" + "/" + f);
  EXPECT_FALSE(fs::exists(tmp / "ck/rank-00002.safetensors"));

  for (CheckpointLayout l : {CheckpointLayout{1, 1}, CheckpointLayout{2, 1},
                             CheckpointLayout{1, 2}, CheckpointLayout{2, 4}}) {
    for (int t = 0; t < l.tp; ++t) {
      for (int e = 0; e < l.ep; ++e) {
        auto got = LoadGemma4RankWeights(tmp / "ck", l, t, e);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ(got->kind, "checkpoint");
        ExpectRankView(*whole, *got, l, t, e);
      }
    }
  }
  // Resharding, and export from every layout, bit for bit.
  ASSERT_TRUE(ReshardCheckpoint(tmp / "ck", tmp / "ep4", Layout(1, 4)).ok());
  ASSERT_TRUE(ReshardCheckpoint(tmp / "ck", tmp / "tp4", Layout(4, 1)).ok());
  EXPECT_TRUE(fs::exists(tmp / "tp4/rank-00003.safetensors"));
  for (auto [dir, l] : {std::pair<std::string, CheckpointLayout>{"ep4", {1, 4}},
                        {"tp4", {4, 1}}}) {
    for (int r = 0; r < l.world(); ++r) {
      auto got =
          LoadGemma4RankWeights(tmp / dir, l, l.tp_index(r), l.ep_index(r));
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectRankView(*whole, *got, l, l.tp_index(r), l.ep_index(r));
    }
  }
  for (const char* from : {"ck", "ep4", "tp4", "conv"}) {
    const std::string out = tmp / (std::string("hf-") + from);
    auto back = ConvertCheckpointToHf(tmp / from, out, ConvertOptions());
    ASSERT_TRUE(back.ok()) << from << ": " << back.status();
    ExpectSameSafetensors(hf + "/model.safetensors",
                          out + "/model.safetensors");
  }
}

TEST(Gemma4CheckpointTest, TpEpRanksWriteACheckpointReadBackAtOtherLayouts) {
  // Full layers: K = V, 1 KV head (replicated over tp 2 and 4).
  TpEpRoundTrip(TextHf());
}

TEST(Gemma4CheckpointTest, VlTpEpRanksWriteACheckpointReadBackAtOtherLayouts) {
  TpEpRoundTrip(VlHf());
}

TEST(Gemma4CheckpointTest, TpEpWithPaddedVocabAndFullLayerQkv) {
  // Full layers with a V projection and 1 KV head; vocab 509 padded by TP.
  TempDir tmp;
  ASSERT_TRUE(::gemma::testing::WriteTinyGemma4Hf(
                  tmp / "hf", ::gemma::testing::TinyGemma4TextConfig(false))
                  .ok());
  TpEpRoundTrip(tmp / "hf");
  auto r1 = LoadGemma4RankWeights(tmp / "hf", CheckpointLayout{2, 1}, 1, 0);
  ASSERT_TRUE(r1.ok()) << r1.status();
  const at::Tensor& embed = r1->tensors.at("text.embed.weight");
  EXPECT_EQ(embed.size(0), 255);  // 509 rows padded to 510, 2 ways
  EXPECT_TRUE(torch::equal(embed[254], torch::zeros_like(embed[254])));
  // Full layer 1: (4 / 2 query heads + k + v) x 16 rows.
  EXPECT_EQ(r1->tensors.at("text.layers.1.attn.qkv.weight").size(0),
            (2 + 2) * 16);
}

TEST(Gemma4CheckpointTest, CheckpointsWrittenBeforeGemma4TpStillRead) {
  TempDir tmp;
  auto whole = LoadGemma4RankWeights(TextHf(), CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(whole.ok()) << whole.status();
  // Written at {tp 1, ep 2}, as before Gemma 4 TP.
  std::vector<ManifestFile> files;
  std::map<std::string, at::Tensor> rank0;
  for (int r = 0; r < 2; ++r) {
    auto mine = LoadGemma4RankWeights(TextHf(), CheckpointLayout{1, 2}, 0, r);
    ASSERT_TRUE(mine.ok()) << mine.status();
    auto f = WriteGemma4RankFile(tmp / "old", whole->config, CheckpointLayout{1, 2}, r, mine->tensors);
    ASSERT_TRUE(f.ok()) << f.status();
    files.push_back(*f);
    if (r == 0) rank0 = mine->tensors;
  }
  ASSERT_TRUE(CommitGemma4Checkpoint(tmp / "old", whole->config_json, whole->config, CheckpointLayout{1, 2}, 3,
                                     rank0, files)
                  .ok());
  // Its manifest as the writers before Gemma 4 TP left it: shard_dims
  // {"num_kv_heads": 1}, nothing else.
  auto m = nlohmann::json::parse(ReadWhole(tmp / "old/manifest.json"));
  m["shard_dims"] = {{"num_kv_heads", 1}};
  {
    std::ofstream out(tmp / "old/manifest.json", std::ios::trunc);
    out << m.dump(1);
  }
  auto reader = CheckpointReader::Open(tmp / "old");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->manifest().tp, 1);
  EXPECT_EQ((*reader)->manifest().ep, 2);
  // Read with the dims of its config, at any layout.
  EXPECT_EQ((*reader)->manifest().dims.num_heads, 4);
  for (CheckpointLayout l : {CheckpointLayout{1, 2}, CheckpointLayout{2, 2},
                             CheckpointLayout{4, 1}}) {
    for (int t = 0; t < l.tp; ++t) {
      auto got = LoadGemma4RankWeights(tmp / "old", l, t, l.ep - 1);
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectRankView(*whole, *got, l, t, l.ep - 1);
    }
  }
  ASSERT_TRUE(ReshardCheckpoint(tmp / "old", tmp / "tp2", Layout(2, 2)).ok());
  ASSERT_TRUE(ConvertCheckpointToHf(tmp / "tp2", tmp / "hf", {}).ok());
  ExpectSameSafetensors(TextHf() + "/model.safetensors",
                        tmp / "hf/model.safetensors");
}

TEST(Gemma4CheckpointTest, RankWriterRefusesShapesThatAreNotTheRanksShard) {
  TempDir tmp;
  auto whole = LoadGemma4RankWeights(TextHf(), CheckpointLayout{1, 1}, 0, 0);
  ASSERT_TRUE(whole.ok()) << whole.status();
  // Whole tensors passed as rank 1 of {tp 2, ep 2}.
  auto f = WriteGemma4RankFile(tmp / "ck", whole->config,
                               CheckpointLayout{2, 2}, 1, whole->tensors);
  EXPECT_TRUE(absl::IsInvalidArgument(f.status())) << f.status();
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("tensor '"));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("TP rank 1"));
  // A name outside the config's model.
  std::map<std::string, at::Tensor> extra = {
      {"text.layers.9.input_norm.weight", torch::zeros({64})}};
  f = WriteGemma4RankFile(tmp / "ck", whole->config, CheckpointLayout{2, 2}, 0,
                          extra);
  EXPECT_TRUE(absl::IsInvalidArgument(f.status())) << f.status();
  EXPECT_THAT(std::string(f.status().message()),
              HasSubstr("text.layers.9.input_norm.weight"));
  // Out-of-range ranks.
  EXPECT_FALSE(WriteGemma4RankFile(tmp / "ck", whole->config,
                                   CheckpointLayout{2, 2}, 2, {})
                   .ok());
  auto bad = LoadGemma4RankWeights(TextHf(), CheckpointLayout{2, 2}, 2, 0);
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status())) << bad.status();
  // tp 4 splits this model (KV heads 2 and 1 replicated), tp 8 does not
  // (4 query heads).
  EXPECT_TRUE(
      LoadGemma4RankWeights(TextHf(), CheckpointLayout{4, 1}, 3, 0).ok());
  bad = LoadGemma4RankWeights(TextHf(), CheckpointLayout{8, 1}, 0, 0);
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status())) << bad.status();
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("num_attention_heads 4"));
}

}  // namespace
}  // namespace gemma
