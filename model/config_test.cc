#include "model/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace gemma {
namespace {

using ::testing::HasSubstr;

// google/gemma-3-4b-it's config.json as published (original release shape):
// most text fields are omitted and come from Gemma 3's defaults.
constexpr char kHub4b[] = R"({
  "architectures": ["Gemma3ForConditionalGeneration"],
  "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106],
  "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
  "model_type": "gemma3",
  "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                  "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                  "sliding_window": 1024},
  "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
  "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                    "model_type": "siglip_vision_model", "num_attention_heads": 16,
                    "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": false}
})";

TEST(ConfigTest, TextDefaultsAreGemma3Defaults) {
  auto c = ParseModelConfigText(R"({"model_type": "gemma3_text"})", "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->is_vl());
  const TextConfig& t = c->text;
  EXPECT_EQ(t.vocab_size, 262208);
  EXPECT_EQ(t.hidden_size, 2304);
  EXPECT_EQ(t.num_layers, 26);
  EXPECT_EQ(t.num_heads, 8);
  EXPECT_EQ(t.num_kv_heads, 4);
  EXPECT_EQ(t.head_dim, 256);
  EXPECT_EQ(t.query_pre_attn_scalar, 256);
  EXPECT_EQ(t.sliding_window, 4096);
  EXPECT_EQ(t.rms_norm_eps, 1e-6);
  EXPECT_EQ(t.rope_full, (RopeParams{"default", 1e6, 1.0}));
  EXPECT_EQ(t.rope_sliding, (RopeParams{"default", 1e4, 1.0}));
  ASSERT_EQ(t.layer_types.size(), 26u);
  EXPECT_EQ(t.layer_types[4], LayerType::kSliding);
  EXPECT_EQ(t.layer_types[5], LayerType::kFull);
  EXPECT_EQ(t.layer_types[25], LayerType::kSliding);
  EXPECT_FALSE(t.final_logit_softcapping.has_value());
}

TEST(ConfigTest, HubConfigOf4bEqualsPreset) {
  auto c = ParseModelConfigText(kHub4b, "gemma-3-4b-it/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  auto preset = Gemma3Preset("gemma-3-4b-it");
  ASSERT_TRUE(preset.ok()) << preset.status();
  EXPECT_TRUE(SameArchitecture(*c, *preset));
  EXPECT_EQ(c->dtype, "bfloat16");
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{1, 106}));
  // Scaling goes to the global layers only.
  EXPECT_EQ(c->text.rope_full, (RopeParams{"linear", 1e6, 8.0}));
  EXPECT_EQ(c->text.rope_sliding, (RopeParams{"default", 1e4, 1.0}));
  EXPECT_EQ(c->vision->layer_norm_eps, 1e-6);
  EXPECT_EQ(c->vision->hidden_act, "gelu_pytorch_tanh");
}

TEST(ConfigTest, LegacyRopeKeysAndPattern) {
  auto c = ParseModelConfigText(
      R"({"model_type": "gemma3_text", "num_hidden_layers": 4,
      "sliding_window_pattern": 2, "rope_theta": 5e5, "rope_local_base_freq": 2e4,
      "rope_scaling": {"type": "linear", "factor": 4}})",
      "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text.layer_types,
            (std::vector<LayerType>{LayerType::kSliding, LayerType::kFull,
                                    LayerType::kSliding, LayerType::kFull}));
  EXPECT_EQ(c->text.rope_full, (RopeParams{"linear", 5e5, 4.0}));
  EXPECT_EQ(c->text.rope_sliding, (RopeParams{"default", 2e4, 1.0}));
}

TEST(ConfigTest, NewerLayerTypesAndRopeParameters) {
  auto c = ParseModelConfigText(R"({"model_type": "gemma3", "text_config": {
      "num_hidden_layers": 3, "layer_types": ["full_attention", "sliding_attention", "full_attention"],
      "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e5},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 123.0}}},
      "vision_config": {"image_size": 224, "patch_size": 14}, "mm_tokens_per_image": 64})",
                                "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text.layer_types,
            (std::vector<LayerType>{LayerType::kFull, LayerType::kSliding,
                                    LayerType::kFull}));
  EXPECT_EQ(c->text.rope_full, (RopeParams{"linear", 1e5, 2.0}));
  EXPECT_EQ(c->text.rope_sliding, (RopeParams{"default", 123.0, 1.0}));
  EXPECT_EQ(c->vision->num_patches(), 256);
}

TEST(ConfigTest, RoundTripsThroughNewerShape) {
  for (const char* name : {"4b", "12b", "27b"}) {
    auto preset = Gemma3Preset(name);
    ASSERT_TRUE(preset.ok());
    auto back = ParseModelConfig(ModelConfigToJson(*preset), "roundtrip");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(SameArchitecture(*preset, *back)) << name;
  }
}

TEST(ConfigTest, LoadsFromFolder) {
  const auto dir = std::filesystem::temp_directory_path() / "gemma_config_test";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << kHub4b;
  auto c = LoadModelConfig(dir.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text.num_layers, 34);
  auto missing = LoadModelConfig((dir / "nope.json").string());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("nope.json"));
  std::filesystem::remove_all(dir);
}

struct BadCase {
  const char* json;
  const char* expected;  // substring of the error
};

TEST(ConfigTest, ErrorsNameSourceAndKeyPath) {
  const BadCase cases[] = {
      {R"({"model_type": "gemma3", "text_config": {"num_attention_heads": "8"}})",
       "cfg.json: text_config.num_attention_heads: expected an integer"},
      {R"({"model_type": "gemma3_text", "rope_scaling": {"rope_type": "yarn", "factor": 2}})",
       "cfg.json: rope_scaling.rope_type: unsupported rope type \"yarn\""},
      {R"({"model_type": "gemma3_text", "num_hidden_layers": 2, "layer_types": ["full_attention"]})",
       "cfg.json: layer_types: has 1 entries for 2 layers"},
      {R"({"model_type": "gemma3_text", "layer_types": ["full_attention", "local"]})",
       "cfg.json: layer_types: unknown layer type \"local\""},
      {R"({"model_type": "gemma3_text", "num_attention_heads": 6, "num_key_value_heads": 4})",
       "cfg.json: num_key_value_heads: num_attention_heads (6) is not a "
       "multiple of 4"},
      {R"({"model_type": "gemma3", "mm_tokens_per_image": 200})",
       "cfg.json: mm_tokens_per_image: must be a perfect square"},
      {R"({"model_type": "gemma3", "vision_config": {"image_size": 100, "patch_size": 14}})",
       "cfg.json: vision_config.patch_size: does not divide image_size"},
      {R"({"model_type": "gemma3", "text_config": {"rope_parameters": {"full_attention": 5}}})",
       "cfg.json: text_config.rope_parameters.full_attention: expected an "
       "object"},
      {R"({"model_type": "llama"})",
       "cfg.json: model_type: unsupported model type"},
      {R"({"model_type": "gemma3_text", "use_bidirectional_attention": true})",
       "cfg.json: use_bidirectional_attention"},
      {R"([1, 2])", "cfg.json: expected a JSON object"},
      {R"({"model_type": )", "cfg.json: not valid JSON"},
  };
  for (const BadCase& bad : cases) {
    auto c = ParseModelConfigText(bad.json, "cfg.json");
    ASSERT_FALSE(c.ok()) << bad.json;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(bad.expected))
        << bad.json;
  }
}

TEST(ConfigTest, UnknownPresetIsAnError) {
  auto c = Gemma3Preset("7b");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("unknown Gemma 3 preset \"7b\""));
}

}  // namespace
}  // namespace gemma
