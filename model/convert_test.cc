// HF <-> ours conversions against tiny random Gemma 3 models that transformers
// built and saved (tests/formats/make_tiny_models.py, a ctest fixture). The
// independent references are python: the safetensors library for the bytes,
// tests/formats/expected_shards.py for our fused/TP layout, and transformers
// itself for loading our export (no warnings, same logits).
#include "model/convert.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "tests/formats/gemma4_tiny.h"
#include "tests/formats/test_util.h"

namespace gemma {
namespace {

namespace fs = std::filesystem;
using ::gemma::testing::ReadFile;
using ::gemma::testing::RunPython;
using ::gemma::testing::TempDir;
using ::gemma::testing::WriteFile;
using ::testing::HasSubstr;

std::string Fixture(const std::string& name) {
  return std::string(GEMMA_FORMATS_FIXTURES) + "/" + name;
}

// Every tensor of an HF folder (or of a list of safetensors files), by name.
struct TensorSet {
  std::vector<std::shared_ptr<const SafetensorsFile>> files;
  std::map<std::string, std::pair<const SafetensorsFile*, const TensorInfo*>>
      by_name;
};

TensorSet ReadFiles(const std::vector<std::string>& paths) {
  TensorSet s;
  for (const std::string& p : paths) {
    auto f = SafetensorsFile::Open(p);
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) continue;
    for (const TensorInfo& t : (*f)->tensors()) {
      EXPECT_TRUE(
          s.by_name.emplace(t.name, std::make_pair(f->get(), &t)).second)
          << t.name << " twice";
    }
    s.files.push_back(*f);
  }
  return s;
}

TensorSet ReadHf(const std::string& dir) {
  std::vector<std::string> paths;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors")
      paths.push_back(e.path().string());
  }
  return ReadFiles(paths);
}

// a's tensors (names mapped by `rename`) equal b's, bit for bit, and b has no
// others.
void ExpectSameTensors(
    const TensorSet& a, const TensorSet& b,
    const std::function<std::string(const std::string&)>& rename = nullptr) {
  ASSERT_FALSE(a.by_name.empty());
  EXPECT_EQ(a.by_name.size(), b.by_name.size());
  for (const auto& [name, at] : a.by_name) {
    const std::string bn = rename ? rename(name) : name;
    auto it = b.by_name.find(bn);
    ASSERT_NE(it, b.by_name.end()) << bn << " missing";
    const auto& [bf, bi] = it->second;
    EXPECT_EQ(at.second->dtype, bi->dtype) << bn;
    EXPECT_EQ(at.second->shape, bi->shape) << bn;
    auto x = at.first->Bytes(*at.second), y = bf->Bytes(*bi);
    EXPECT_TRUE(x.size() == y.size() &&
                std::equal(x.begin(), x.end(), y.begin()))
        << bn << " bytes differ";
  }
}

std::vector<std::string> RankFiles(const std::string& dir, int tp) {
  std::vector<std::string> out;
  for (int r = 0; r < tp; ++r)
    out.push_back(absl::StrFormat("%s/rank-%05d.safetensors", dir, r));
  return out;
}

// Our checkpoint at tp equals expected_shards.py's layout of the HF folder.
void ExpectMatchesPythonShards(const std::string& hf, const std::string& ckpt,
                               int tp, const TempDir& tmp) {
  const std::string want_path = tmp / "expected.safetensors";
  auto r = RunPython("expected_shards.py",
                     absl::StrCat(hf, " ", tp, " ", want_path));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  TensorSet want = ReadFiles({want_path});
  size_t total = 0;
  for (int rank = 0; rank < tp; ++rank) {
    TensorSet got = ReadFiles({RankFiles(ckpt, tp)[rank]});
    total += got.by_name.size();
    for (const auto& [name, g] : got.by_name) {
      auto it = want.by_name.find(absl::StrCat("rank", rank, "/", name));
      ASSERT_NE(it, want.by_name.end()) << name;
      EXPECT_EQ(g.second->shape, it->second.second->shape) << name;
      auto x = g.first->Bytes(*g.second),
           y = it->second.first->Bytes(*it->second.second);
      EXPECT_TRUE(x.size() == y.size() &&
                  std::equal(x.begin(), x.end(), y.begin()))
          << "rank " << rank << " " << name
          << " differs from the python reference";
    }
  }
  EXPECT_EQ(total, want.by_name.size());
}

std::string CopyFixture(const TempDir& tmp, const std::string& name) {
  const std::string dst = tmp / name;
  fs::copy(Fixture(name), dst, fs::copy_options::recursive);
  return dst;
}

struct Case {
  std::string model;
  int tp;
};
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.model << " tp=" << c.tp;
}

class RoundTripTest : public ::testing::TestWithParam<Case> {};

TEST_P(RoundTripTest, HfToOursToHfIsBitExactAndTransformersLoadsIt) {
  const Case c = GetParam();
  TempDir tmp;
  const std::string hf = Fixture(c.model), ckpt = tmp / "ckpt",
                    out = tmp / "hf";
  ConvertOptions opt;
  opt.tp = c.tp;
  uint64_t last_done = 0, last_total = 0;
  bool monotonic = true;
  opt.progress = [&](uint64_t done, uint64_t total) {
    monotonic &= done >= last_done;
    last_done = done;
    last_total = total;
  };
  auto in = ConvertHfToCheckpoint(hf, ckpt, opt);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_TRUE(monotonic);
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(in->bytes, last_total);
  EXPECT_FALSE(fs::exists(ckpt + ".tmp"));
  ExpectMatchesPythonShards(hf, ckpt, c.tp, tmp);

  opt.progress = nullptr;
  auto outs = ConvertCheckpointToHf(ckpt, out, opt);
  ASSERT_TRUE(outs.ok()) << outs.status();
  ExpectSameTensors(ReadHf(hf), ReadHf(out));
  EXPECT_FALSE(fs::exists(out + "/lm_head.weight"));
  auto r = RunPython("check_export.py", hf + " " + out);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("check_export: OK"));
}

INSTANTIATE_TEST_SUITE_P(
    Models, RoundTripTest,
    ::testing::Values(Case{"vl_f32", 1}, Case{"vl_f32", 2},
                      Case{"vl_bf16_sharded", 1}, Case{"vl_bf16_sharded", 2},
                      Case{"vl_f16", 2}, Case{"text_f32", 1},
                      Case{"text_f32", 2}, Case{"text_bf16_sharded", 2}),
    [](const auto& info) {
      return absl::StrCat(info.param.model, "_tp", info.param.tp);
    });

TEST(ConvertTest, ExportShardsBySizeWithAnIndexTransformersLoads) {
  TempDir tmp;
  ConvertOptions opt;
  opt.tp = 2;
  ASSERT_TRUE(
      ConvertHfToCheckpoint(Fixture("vl_bf16_sharded"), tmp / "ckpt", opt)
          .ok());
  opt.max_shard_bytes = 16 << 10;
  auto s = ConvertCheckpointToHf(tmp / "ckpt", tmp / "hf", opt);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_GT(s->files, 2);
  ASSERT_TRUE(fs::exists(tmp / "hf/model.safetensors.index.json"));
  auto index =
      nlohmann::json::parse(ReadFile(tmp / "hf/model.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"].size(),
            ReadHf(Fixture("vl_bf16_sharded")).by_name.size());
  ExpectSameTensors(ReadHf(Fixture("vl_bf16_sharded")), ReadHf(tmp / "hf"));
  auto r = RunPython("check_export.py",
                     Fixture("vl_bf16_sharded") + " " + (tmp / "hf"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST(ConvertTest, OlderKeyLayoutsImportToTheSameCheckpoint) {
  TempDir tmp;
  ConvertOptions opt;
  opt.tp = 2;
  ASSERT_TRUE(ConvertHfToCheckpoint(Fixture("vl_f32"), tmp / "base", opt).ok());
  for (const char* legacy : {"vl_legacy_hub", "vl_legacy_4x"}) {
    const std::string ckpt = tmp / legacy;
    auto s = ConvertHfToCheckpoint(Fixture(legacy), ckpt, opt);
    ASSERT_TRUE(s.ok()) << legacy << ": " << s.status();
    for (int r = 0; r < 2; ++r) {
      ExpectSameTensors(ReadFiles({RankFiles(tmp / "base", 2)[r]}),
                        ReadFiles({RankFiles(ckpt, 2)[r]}));
    }
    // And exports in the current layout, equal to what transformers 5.17 saved.
    ASSERT_TRUE(ConvertCheckpointToHf(ckpt, ckpt + "_hf", opt).ok());
    ExpectSameTensors(ReadHf(Fixture("vl_f32")), ReadHf(ckpt + "_hf"));
  }
}

// A config.json in the older format (rope_theta, rope_local_base_freq,
// rope_scaling, sliding_window_pattern, torch_dtype) is exported in the new
// one, and transformers reads both the same way (same logits).
TEST(ConvertTest, LegacyConfigIsExportedInTheNewFormat) {
  TempDir tmp;
  const std::string hf = CopyFixture(tmp, "vl_f32");
  auto cfg = nlohmann::json::parse(ReadFile(hf + "/config.json"));
  auto& tc = cfg["text_config"];
  tc.erase("rope_parameters");
  tc.erase("layer_types");
  tc.erase("_sliding_window_pattern");
  tc["rope_theta"] = 500000.0;
  tc["rope_local_base_freq"] = 20000.0;
  tc["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  tc["sliding_window_pattern"] = 2;
  cfg["torch_dtype"] = cfg["dtype"];
  cfg.erase("dtype");
  WriteFile(hf + "/config.json", cfg.dump(2));
  ConvertOptions opt;
  opt.tp = 2;
  ASSERT_TRUE(ConvertHfToCheckpoint(hf, tmp / "ckpt", opt).ok());
  ASSERT_TRUE(ConvertCheckpointToHf(tmp / "ckpt", tmp / "out", opt).ok());
  auto out = nlohmann::json::parse(ReadFile(tmp / "out/config.json"));
  const auto& otc = out["text_config"];
  EXPECT_FALSE(otc.contains("rope_theta"));
  EXPECT_FALSE(otc.contains("rope_scaling"));
  EXPECT_FALSE(out.contains("torch_dtype"));
  EXPECT_EQ(out["dtype"], "float32");
  EXPECT_EQ(otc["rope_parameters"]["full_attention"]["rope_theta"], 500000.0);
  EXPECT_EQ(otc["rope_parameters"]["full_attention"]["factor"], 2.0);
  EXPECT_EQ(otc["rope_parameters"]["sliding_attention"]["rope_theta"], 20000.0);
  EXPECT_EQ(otc["layer_types"],
            nlohmann::json(
                {"sliding_attention", "full_attention", "sliding_attention"}));
  auto r = RunPython("check_export.py", hf + " " + (tmp / "out"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST(ConvertTest, ReshardingMatchesADirectImport) {
  TempDir tmp;
  ConvertOptions opt;
  opt.tp = 2;
  ASSERT_TRUE(
      ConvertHfToCheckpoint(Fixture("text_f32"), tmp / "tp2", opt).ok());
  opt.tp = 1;
  ASSERT_TRUE(
      ConvertHfToCheckpoint(Fixture("text_f32"), tmp / "tp1", opt).ok());
  auto s = ReshardCheckpoint(tmp / "tp2", tmp / "tp2to1", opt);
  ASSERT_TRUE(s.ok()) << s.status();
  ExpectSameTensors(ReadFiles(RankFiles(tmp / "tp1", 1)),
                    ReadFiles(RankFiles(tmp / "tp2to1", 1)));
}

TEST(ConvertTest, TokenizerAndProcessorFilesTravelWithTheWeights) {
  TempDir tmp;
  const std::string hf = CopyFixture(tmp, "vl_f32");
  WriteFile(hf + "/tokenizer.model", std::string("spm\0bytes", 9));
  WriteFile(hf + "/tokenizer_config.json", "{\"chat_template\": \"x\"}");
  ConvertOptions opt;
  opt.tp = 2;
  ASSERT_TRUE(ConvertHfToCheckpoint(hf, tmp / "ckpt", opt).ok());
  opt.tp = 1;
  ASSERT_TRUE(ReshardCheckpoint(tmp / "ckpt", tmp / "tp1", opt).ok());
  ASSERT_TRUE(ConvertCheckpointToHf(tmp / "tp1", tmp / "hf", opt).ok());
  for (const std::string dir : {tmp / "ckpt", tmp / "tp1", tmp / "hf"}) {
    EXPECT_EQ(ReadFile(dir + "/tokenizer.model"), std::string("spm\0bytes", 9))
        << dir;
    EXPECT_EQ(ReadFile(dir + "/tokenizer_config.json"),
              "{\"chat_template\": \"x\"}")
        << dir;
    EXPECT_FALSE(fs::exists(dir + "/special_tokens_map.json")) << dir;
  }
}

// ---- malformed inputs
// ----------------------------------------------------------

TEST(ConvertTest, MissingConfigFieldNamesFileAndField) {
  TempDir tmp;
  const std::string hf = CopyFixture(tmp, "vl_f32");
  auto cfg = nlohmann::json::parse(ReadFile(hf + "/config.json"));
  cfg["text_config"].erase("num_key_value_heads");
  WriteFile(hf + "/config.json", cfg.dump());
  auto s = ConvertHfToCheckpoint(hf, tmp / "out", {});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr(hf + "/config.json"));
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("text_config.num_key_value_heads: missing"));
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST(ConvertTest, ShardListedInIndexButAbsentNamesTheShard) {
  TempDir tmp;
  const std::string hf = CopyFixture(tmp, "text_bf16_sharded");
  auto index =
      nlohmann::json::parse(ReadFile(hf + "/model.safetensors.index.json"));
  const std::string victim = index["weight_map"].begin().value();
  fs::remove(hf + "/" + victim);
  auto s = ConvertHfToCheckpoint(hf, tmp / "out", {});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr(hf + "/" + victim));
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_FALSE(fs::exists(tmp / "out.tmp"));
}

// Rewrites model.safetensors of `hf` with `edit` applied to the tensor list.
void RewriteTensors(
    const std::string& hf,
    const std::function<void(SafetensorsWriter&, const TensorInfo&,
                             absl::Span<const uint8_t>)>& edit) {
  auto f = SafetensorsFile::Open(hf + "/model.safetensors");
  ASSERT_TRUE(f.ok());
  SafetensorsWriter w;
  for (const TensorInfo& t : (*f)->tensors()) edit(w, t, (*f)->Bytes(t));
  ASSERT_TRUE(w.Write(hf + "/model.safetensors").ok());
}

TEST(ConvertTest, WrongShapeNamesFileAndTensor) {
  TempDir tmp;
  const std::string hf = CopyFixture(tmp, "text_f32");
  const std::string victim = "model.layers.1.self_attn.k_proj.weight";
  RewriteTensors(hf, [&](SafetensorsWriter& w, const TensorInfo& t,
                         absl::Span<const uint8_t> b) {
    std::vector<int64_t> shape = t.shape;
    if (t.name == victim) shape = {shape[1], shape[0]};
    ASSERT_TRUE(w.AddBytes(t.name, t.dtype, shape, b).ok());
  });
  auto s = ConvertHfToCheckpoint(hf, tmp / "out", {});
  ASSERT_FALSE(s.ok());
  const std::string msg(s.status().message());
  EXPECT_THAT(msg, HasSubstr(hf + "/model.safetensors"));
  EXPECT_THAT(msg, HasSubstr(victim));
  EXPECT_THAT(msg,
              HasSubstr("has shape [32, 16] but config.json implies [16, 32]"));
}

TEST(ConvertTest, MissingAndUnexpectedTensorsAreNamed) {
  TempDir tmp;
  const std::string hf = CopyFixture(tmp, "text_f32");
  RewriteTensors(hf, [&](SafetensorsWriter& w, const TensorInfo& t,
                         absl::Span<const uint8_t> b) {
    if (t.name == "model.norm.weight") return;
    ASSERT_TRUE(w.AddBytes(t.name, t.dtype, t.shape, b).ok());
  });
  auto s = ConvertHfToCheckpoint(hf, tmp / "out", {});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("'model.norm.weight'"));

  const std::string hf2 = tmp / "again";
  fs::copy(Fixture("text_f32"), hf2, fs::copy_options::recursive);
  RewriteTensors(hf2, [&](SafetensorsWriter& w, const TensorInfo& t,
                          absl::Span<const uint8_t> b) {
    ASSERT_TRUE(w.AddBytes(t.name, t.dtype, t.shape, b).ok());
    if (t.name == "model.norm.weight")
      ASSERT_TRUE(w.AddBytes("model.layers.9.extra", t.dtype, t.shape, b).ok());
  });
  s = ConvertHfToCheckpoint(hf2, tmp / "out", {});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("unexpected tensor 'model.layers.9.extra'"));
}

TEST(ConvertTest, ExportRefusesACheckpointWhoseConfigDisagreesWithItsShapes) {
  TempDir tmp;
  ASSERT_TRUE(
      ConvertHfToCheckpoint(Fixture("text_f32"), tmp / "ckpt", {}).ok());
  auto m = nlohmann::json::parse(ReadFile(tmp / "ckpt/manifest.json"));
  m["model_config"]["intermediate_size"] = 64;
  WriteFile(tmp / "ckpt/manifest.json", m.dump());
  auto s = ConvertCheckpointToHf(tmp / "ckpt", tmp / "hf", {});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("text.layers.0.mlp.gate_up.weight"));
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("manifest.json"));
  EXPECT_FALSE(fs::exists(tmp / "hf"));
}

TEST(ConvertTest, TpMustDivideKvHeadsAndOutputIsNotClobbered) {
  TempDir tmp;
  ConvertOptions opt;
  opt.tp = 4;  // the tiny models have 2 KV heads
  auto s = ConvertHfToCheckpoint(Fixture("text_f32"), tmp / "out", opt);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("num_key_value_heads 2"));
  EXPECT_FALSE(fs::exists(tmp / "out"));
  opt.tp = 1;
  ASSERT_TRUE(
      ConvertHfToCheckpoint(Fixture("text_f32"), tmp / "out", opt).ok());
  auto again = ConvertHfToCheckpoint(Fixture("text_f32"), tmp / "out", opt);
  EXPECT_TRUE(absl::IsAlreadyExists(again.status())) << again.status();
  opt.overwrite = true;
  EXPECT_TRUE(
      ConvertHfToCheckpoint(Fixture("text_f32"), tmp / "out", opt).ok());
}

// ---- Gemma 4 at TP x EP (tiny models written by tests/formats/gemma4_tiny.h)

ConvertOptions Gemma4Layout(int tp, int ep) {
  ConvertOptions o;
  o.tp = tp;
  o.ep = ep;
  return o;
}

// The bytes of rows [begin, end) of an HF tensor.
std::vector<uint8_t> HfRowBytes(const TensorSet& hf, const std::string& name,
                                int64_t begin, int64_t end) {
  const auto& [f, t] = hf.by_name.at(name);
  auto bytes = f->Bytes(*t);
  const size_t row = bytes.size() / static_cast<size_t>(t->shape[0]);
  return std::vector<uint8_t>(bytes.begin() + begin * row,
                              bytes.begin() + end * row);
}

TEST(ConvertGemma4Test, HfToTpEpLayoutsToHfIsBitExact) {
  for (bool k_eq_v : {true, false}) {
    SCOPED_TRACE(k_eq_v ? "full layers K = V" : "full layers with V");
    TempDir tmp;
    const Gemma4TextConfig config =
        ::gemma::testing::TinyGemma4TextConfig(k_eq_v);
    ASSERT_TRUE(::gemma::testing::WriteTinyGemma4Hf(tmp / "hf", config).ok());
    const TensorSet hf = ReadHf(tmp / "hf");
    struct L {
      int tp, ep;
    };
    for (L l : {L{2, 2}, L{4, 1}, L{2, 4}, L{4, 2}, L{1, 4}}) {
      SCOPED_TRACE(absl::StrCat("tp ", l.tp, " ep ", l.ep));
      const std::string ck = tmp / absl::StrCat("ck", l.tp, "x", l.ep);
      auto s = ConvertHfToCheckpoint(tmp / "hf", ck, Gemma4Layout(l.tp, l.ep));
      ASSERT_TRUE(s.ok()) << s.status();
      const int world = std::max(l.tp, l.ep);
      EXPECT_EQ(s->files, world);
      EXPECT_FALSE(fs::exists(RankFiles(ck, world + 1)[world]));
      // File rank r: dense shards when r < tp, expert slices when r < ep.
      for (int r = 0; r < world; ++r) {
        TensorSet f = ReadFiles({RankFiles(ck, world)[r]});
        EXPECT_EQ(f.by_name.count("text.layers.0.attn.o.weight"),
                  r < l.tp ? 1u : 0u)
            << r;
        EXPECT_EQ(f.by_name.count("text.layers.0.moe.experts.down"),
                  r < l.ep ? 1u : 0u)
            << r;
        if (r >= l.tp) continue;
        // Full layer 1 has 1 KV head: rank r holds query heads
        // [r nq / tp, (r + 1) nq / tp) then the K (and V) rows.
        const std::string name = absl::StrCat("text.layers.1.attn.",
                                              k_eq_v ? "qk" : "qkv", ".weight");
        const int64_t hd = config.global_head_dim,
                      q = config.num_heads / l.tp * hd;
        std::vector<uint8_t> want = HfRowBytes(
            hf, "model.layers.1.self_attn.q_proj.weight", r * q, (r + 1) * q);
        for (const char* kv : {"k_proj", "v_proj"}) {
          if (k_eq_v && std::string(kv) == "v_proj") continue;
          auto rows = HfRowBytes(
              hf, absl::StrCat("model.layers.1.self_attn.", kv, ".weight"), 0,
              hd);
          want.insert(want.end(), rows.begin(), rows.end());
        }
        const auto& [file, info] = f.by_name.at(name);
        auto got = file->Bytes(*info);
        EXPECT_TRUE(got.size() == want.size() &&
                    std::equal(got.begin(), got.end(), want.begin()))
            << name << " on rank " << r;
      }
      auto back = ConvertCheckpointToHf(ck, ck + "-hf", ConvertOptions());
      ASSERT_TRUE(back.ok()) << back.status();
      ExpectSameTensors(hf, ReadHf(ck + "-hf"));
    }
    // Resharding {tp 2, ep 2} gives what a direct import writes.
    for (L l : {L{1, 4}, L{4, 1}, L{4, 2}}) {
      const std::string out = tmp / absl::StrCat("re", l.tp, "x", l.ep);
      auto s = ReshardCheckpoint(tmp / "ck2x2", out, Gemma4Layout(l.tp, l.ep));
      ASSERT_TRUE(s.ok()) << s.status();
      const int world = std::max(l.tp, l.ep);
      const std::string direct = tmp / absl::StrCat("ck", l.tp, "x", l.ep);
      if (!fs::exists(direct)) {
        ASSERT_TRUE(
            ConvertHfToCheckpoint(tmp / "hf", direct, Gemma4Layout(l.tp, l.ep))
                .ok());
      }
      for (int r = 0; r < world; ++r) {
        ExpectSameTensors(ReadFiles({RankFiles(direct, world)[r]}),
                          ReadFiles({RankFiles(out, world)[r]}));
      }
      ASSERT_TRUE(ConvertCheckpointToHf(out, out + "-hf", {}).ok());
      ExpectSameTensors(hf, ReadHf(out + "-hf"));
    }
  }
}

TEST(ConvertGemma4Test, TpTheModelCannotSplitNamesTheFieldAndConfig) {
  TempDir tmp;
  Gemma4TextConfig config = ::gemma::testing::TinyGemma4TextConfig(true);
  ASSERT_TRUE(::gemma::testing::WriteTinyGemma4Hf(tmp / "hf", config).ok());
  // 4 query heads: not 3 or 8 ways.
  for (int tp : {3, 8}) {
    auto s =
        ConvertHfToCheckpoint(tmp / "hf", tmp / "out", Gemma4Layout(tp, 1));
    EXPECT_TRUE(absl::IsInvalidArgument(s.status())) << s.status();
    EXPECT_THAT(std::string(s.status().message()),
                HasSubstr(absl::StrCat("tp: ", tp)));
    EXPECT_THAT(std::string(s.status().message()),
                HasSubstr("num_attention_heads 4"));
    EXPECT_THAT(std::string(s.status().message()), HasSubstr("config.json"));
    EXPECT_FALSE(fs::exists(tmp / "out"));
  }
  // The caller's field name (the convert job's spelling).
  auto info = InspectModelFolder(tmp / "hf");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->gemma4);
  EXPECT_EQ(info->num_heads, 4);
  EXPECT_EQ(info->sliding_kv_heads, 2);
  EXPECT_EQ(info->full_kv_heads, 1);
  auto st = CheckConvertLayout(*info, 3, 1, "convert.tp", "convert.ep");
  EXPECT_THAT(std::string(st.message()), HasSubstr("convert.tp: 3"));
  EXPECT_TRUE(CheckConvertLayout(*info, 4, 2, "convert.tp", "convert.ep").ok());
  // 3 KV heads on sliding layers (6 query heads): neither a multiple of tp 2
  // nor a divisor of it.
  Gemma4TextConfig kv3 = config;
  kv3.num_heads = 6;
  kv3.num_kv_heads = 3;
  ASSERT_TRUE(::gemma::testing::WriteTinyGemma4Hf(tmp / "kv3", kv3).ok());
  auto s = ConvertHfToCheckpoint(tmp / "kv3", tmp / "out", Gemma4Layout(2, 1));
  EXPECT_TRUE(absl::IsInvalidArgument(s.status())) << s.status();
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("num_key_value_heads 3"));
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("tp: 2"));
  // 1 global KV head is fine at tp 2 (replicated), intermediate_size 25 not.
  Gemma4TextConfig odd = config;
  odd.intermediate_size = 25;
  ASSERT_TRUE(::gemma::testing::WriteTinyGemma4Hf(tmp / "odd", odd).ok());
  s = ConvertHfToCheckpoint(tmp / "odd", tmp / "out", Gemma4Layout(2, 1));
  EXPECT_TRUE(absl::IsInvalidArgument(s.status())) << s.status();
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("intermediate_size 25"));
  EXPECT_TRUE(
      ConvertHfToCheckpoint(tmp / "odd", tmp / "out", Gemma4Layout(1, 2)).ok());
}

TEST(ConvertCliTest, LocalConvertRoundTripsWithJsonOutputAndHelp) {
  TempDir tmp;
  const std::string gemmactl = std::string(GEMMA_BINARY_DIR) + "/bin/gemmactl";
  auto help = gemma::testing::Run(gemmactl + " local convert --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.output, HasSubstr("--to-format"));
  EXPECT_THAT(help.output, HasSubstr("Examples:"));
  auto in = gemma::testing::Run(gemmactl + " local convert --from " +
                                Fixture("vl_f16") + " --to " + (tmp / "ckpt") +
                                " --tp 2 -o json");
  ASSERT_EQ(in.exit_code, 0) << in.output;
  EXPECT_THAT(in.output, HasSubstr("100%"));  // the progress bar (stderr)
  auto j = nlohmann::json::parse(in.output.substr(in.output.find('{')));
  EXPECT_EQ(j["tp"], 2);
  EXPECT_EQ(j["to_format"], "ours");
  EXPECT_GT(j["bytes"].get<uint64_t>(), 0u);
  EXPECT_GT(j["bytes_per_second"].get<double>(), 0.0);
  auto out = gemma::testing::Run(gemmactl + " local convert --quiet --from " +
                                 (tmp / "ckpt") + " --to " + (tmp / "hf"));
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output,
              HasSubstr("/s)"));  // bytes per second in the final line
  ExpectSameTensors(ReadHf(Fixture("vl_f16")), ReadHf(tmp / "hf"));
  auto again = gemma::testing::Run(gemmactl + " local convert --from " +
                                   (tmp / "ckpt") + " --to " + (tmp / "hf"));
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.output, HasSubstr("already exists"));
  auto bad =
      gemma::testing::Run(gemmactl + " local convert --from " + (tmp / "ckpt"));
  EXPECT_EQ(bad.exit_code, 2);
}

}  // namespace
}  // namespace gemma
