#include "model/hf_mapping.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

json VlConfig() {
  return {{"model_type", "gemma3"},
          {"text_config",
           {{"vocab_size", 67},
            {"hidden_size", 32},
            {"intermediate_size", 48},
            {"num_hidden_layers", 2},
            {"num_attention_heads", 4},
            {"num_key_value_heads", 2},
            {"head_dim", 8}}},
          {"vision_config",
           {{"hidden_size", 16},
            {"intermediate_size", 24},
            {"num_hidden_layers", 1},
            {"image_size", 16},
            {"patch_size", 4}}}};
}

TEST(HfMappingTest, ConfigErrorsNameTheFileAndField) {
  json c = VlConfig();
  c["text_config"].erase("head_dim");
  auto r = ParseHfConfigLite(c.dump(), "/m/config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("/m/config.json: text_config.head_dim: missing"));
  c = VlConfig();
  c["vision_config"]["patch_size"] = "four";
  r = ParseHfConfigLite(c.dump(), "cfg.json");
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("vision_config.patch_size: not a positive integer"));
  c = VlConfig();
  c["vision_config"]["vision_use_head"] = true;
  EXPECT_FALSE(ParseHfConfigLite(c.dump(), "cfg.json").ok());
  EXPECT_FALSE(ParseHfConfigLite("{not json", "cfg.json").ok());
  c = VlConfig();
  c["text_config"]["num_key_value_heads"] = 3;
  auto cfg = ParseHfConfigLite(c.dump(), "cfg.json");
  ASSERT_TRUE(cfg.ok());
  EXPECT_FALSE(BuildHfMapping(*cfg).ok());
}

TEST(HfMappingTest, QkvIsFusedPerKvGroupAndGateUpAsGateThenUp) {
  auto cfg = ParseHfConfigLite(VlConfig().dump(), "cfg.json");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->vision);
  auto m = BuildHfMapping(*cfg);
  ASSERT_TRUE(m.ok());
  const ParamMapping* qkv = nullptr;
  const ParamMapping* gate_up = nullptr;
  for (const auto& p : m->params) {
    if (p.name == "text.layers.1.attn.qkv.weight") qkv = &p;
    if (p.name == "text.layers.1.mlp.gate_up.weight") gate_up = &p;
  }
  ASSERT_NE(qkv, nullptr);
  EXPECT_EQ(qkv->shape, (std::vector<int64_t>{(4 + 2 * 2) * 8, 32}));
  const std::string t = "language_model.model.layers.1.self_attn.";
  ASSERT_EQ(qkv->pieces.size(), 6u);
  const std::vector<std::tuple<std::string, int64_t, int64_t>> want = {
      {t + "q_proj.weight", 0, 16}, {t + "k_proj.weight", 0, 8},
      {t + "v_proj.weight", 0, 8},  {t + "q_proj.weight", 16, 32},
      {t + "k_proj.weight", 8, 16}, {t + "v_proj.weight", 8, 16}};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(qkv->pieces[i].hf_name, std::get<0>(want[i]));
    EXPECT_EQ(qkv->pieces[i].row_begin, std::get<1>(want[i]));
    EXPECT_EQ(qkv->pieces[i].row_end, std::get<2>(want[i]));
  }
  ASSERT_NE(gate_up, nullptr);
  ASSERT_EQ(gate_up->pieces.size(), 2u);
  EXPECT_EQ(gate_up->pieces[0].hf_name,
            "language_model.model.layers.1.mlp.gate_proj.weight");
  EXPECT_EQ(gate_up->pieces[1].hf_name,
            "language_model.model.layers.1.mlp.up_proj.weight");
  // Every HF tensor is used, once per row.
  std::map<std::string, int64_t> rows_used;
  for (const auto& p : m->params)
    for (const auto& piece : p.pieces)
      rows_used[piece.hf_name] += piece.row_end - piece.row_begin;
  for (const auto& t2 : m->hf_tensors)
    EXPECT_EQ(rows_used[t2.hf_name], t2.shape.empty() ? 1 : t2.shape[0])
        << t2.hf_name;
  EXPECT_EQ(rows_used.size(), m->hf_tensors.size());
}

TEST(HfMappingTest, AllKnownKeyLayoutsMapToOneSpelling) {
  auto vl = ParseHfConfigLite(VlConfig().dump(), "cfg.json");
  const std::pair<const char*, const char*> vl_cases[] = {
      {"language_model.model.layers.0.mlp.up_proj.weight",
       "language_model.model.layers.0.mlp.up_proj.weight"},
      {"model.language_model.layers.0.mlp.up_proj.weight",
       "language_model.model.layers.0.mlp.up_proj.weight"},
      {"vision_tower.vision_model.encoder.layers.0.mlp.fc1.bias",
       "vision_tower.encoder.layers.0.mlp.fc1.bias"},
      {"model.vision_tower.vision_model.post_layernorm.weight",
       "vision_tower.post_layernorm.weight"},
      {"model.vision_tower.embeddings.patch_embedding.weight",
       "vision_tower.embeddings.patch_embedding.weight"},
      {"vision_tower.encoder.layers.0.layer_norm1.weight",
       "vision_tower.encoder.layers.0.layer_norm1.weight"},
      {"model.multi_modal_projector.mm_input_projection_weight",
       "multi_modal_projector.mm_input_projection_weight"},
      {"lm_head.weight", ""},
      {"language_model.lm_head.weight", ""},
  };
  for (const auto& [in, out] : vl_cases) {
    auto r = CanonicalHfName(in, *vl);
    ASSERT_TRUE(r.ok()) << in;
    EXPECT_EQ(*r, out) << in;
  }
  EXPECT_TRUE(
      absl::IsNotFound(CanonicalHfName("encoder.layers.0.x", *vl).status()));

  json tc = VlConfig()["text_config"];
  tc["model_type"] = "gemma3_text";
  auto text = ParseHfConfigLite(tc.dump(), "cfg.json");
  ASSERT_TRUE(text.ok());
  EXPECT_FALSE(text->vision);
  EXPECT_EQ(*CanonicalHfName("model.norm.weight", *text), "model.norm.weight");
  EXPECT_EQ(*CanonicalHfName("model.language_model.norm.weight", *text),
            "model.norm.weight");
  EXPECT_EQ(*CanonicalHfName("lm_head.weight", *text), "");
  EXPECT_FALSE(CanonicalHfName("vision_tower.encoder.x", *text).ok());
}

TEST(HfMappingTest, ModernizeKeepsNewConfigsAndConvertsOldOnes) {
  json c = VlConfig();
  c["text_config"]["rope_parameters"] = {
      {"full_attention", {{"rope_type", "default"}, {"rope_theta", 1e6}}},
      {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}};
  c["text_config"]["layer_types"] = {"sliding_attention", "full_attention"};
  c["dtype"] = "bfloat16";
  auto same = ModernizeHfConfig(c.dump(), "cfg.json");
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(json::parse(*same), c);

  json old = VlConfig();
  old["text_config"]["rope_theta"] = 1e6;
  old["text_config"]["rope_scaling"] = {{"type", "linear"}, {"factor", 8.0}};
  old["torch_dtype"] = "bfloat16";
  auto modern = ModernizeHfConfig(old.dump(), "cfg.json");
  ASSERT_TRUE(modern.ok());
  json m = json::parse(*modern);
  EXPECT_EQ(m["dtype"], "bfloat16");
  EXPECT_EQ(m["text_config"]["rope_parameters"]["full_attention"]["rope_type"],
            "linear");
  EXPECT_EQ(m["text_config"]["rope_parameters"]["full_attention"]["factor"],
            8.0);
  EXPECT_EQ(
      m["text_config"]["rope_parameters"]["sliding_attention"]["rope_theta"],
      10000.0);
  EXPECT_EQ(m["text_config"]["layer_types"].size(), 2u);
  EXPECT_FALSE(ModernizeHfConfig("[]", "cfg.json").ok());
}

}  // namespace
}  // namespace gemma
