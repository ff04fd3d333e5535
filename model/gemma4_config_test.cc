// Gemma 4 config parsing: the shape transformers 5.17 writes
// (per_layer_config), the hub's explicit global_head_dim /
// num_global_key_value_heads, VL nesting, the 26B-A4B preset, and errors naming
// the key.
#include "model/gemma4_config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace gemma {
namespace {

using nlohmann::json;

// What transformers 5.17 Gemma4TextConfig(...).to_json_string() writes for the
// tiny parity model (copied from its output).
json Saved517() {
  return json::parse(R"({
    "attention_bias": false, "attention_k_eq_v": true, "bos_token_id": 2,
    "enable_moe_block": true, "eos_token_id": 1, "final_logit_softcapping": 30.0,
    "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64,
    "hidden_size_per_layer_input": 0, "intermediate_size": 96,
    "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
                    "full_attention"],
    "max_position_embeddings": 131072, "model_type": "gemma4_text",
    "moe_intermediate_size": 32, "num_attention_heads": 4, "num_experts": 4,
    "num_hidden_layers": 4, "num_key_value_heads": 2, "num_kv_shared_layers": 0,
    "pad_token_id": 0,
    "per_layer_config": {"3": {"head_dim": 32, "num_key_value_heads": 1}},
    "rms_norm_eps": 1e-06,
    "rope_parameters": {
      "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                         "rope_type": "proportional"},
      "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
    "sliding_window": 8, "tie_word_embeddings": true, "top_k_experts": 2,
    "use_bidirectional_attention": null, "use_double_wide_mlp": false,
    "vocab_size": 512, "vocab_size_per_layer_input": 262144})");
}

TEST(Gemma4ConfigTest, ReadsTransformers517Shape) {
  auto c = ParseGemma4TextConfig(Saved517(), "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->global_head_dim, 32);
  EXPECT_EQ(c->num_global_kv_heads, 1);
  EXPECT_TRUE(c->attention_k_eq_v);
  EXPECT_TRUE(c->k_eq_v(LayerType::kFull));
  EXPECT_FALSE(c->k_eq_v(LayerType::kSliding));
  EXPECT_EQ(c->layer_head_dim(LayerType::kFull), 32);
  EXPECT_EQ(c->layer_kv_heads(LayerType::kSliding), 2);
  EXPECT_EQ(c->rope_full.rope_type, "proportional");
  EXPECT_DOUBLE_EQ(c->rope_full.partial_rotary_factor, 0.25);
  EXPECT_DOUBLE_EQ(c->rope_full.theta, 1e6);
  EXPECT_DOUBLE_EQ(c->rope_sliding.theta, 1e4);
  EXPECT_TRUE(c->enable_moe_block);
  EXPECT_EQ(c->num_experts, 4);
  EXPECT_EQ(c->top_k_experts, 2);
  EXPECT_EQ(c->moe_intermediate_size, 32);
  ASSERT_TRUE(c->final_logit_softcapping.has_value());
  EXPECT_DOUBLE_EQ(*c->final_logit_softcapping, 30.0);
  EXPECT_TRUE(c->use_bidirectional_attention.empty());
  EXPECT_EQ(c->layer_types.back(), LayerType::kFull);
  EXPECT_TRUE(IsGemma4Config(Saved517()));
}

TEST(Gemma4ConfigTest, HubExplicitKeysNestedUnderTextConfig) {
  json text = Saved517();
  text.erase("per_layer_config");
  text["global_head_dim"] = 32;
  text["num_global_key_value_heads"] = 1;
  text["use_bidirectional_attention"] = "vision";
  json doc = {{"model_type", "gemma4"},
              {"text_config", text},
              {"eos_token_id", {1, 106}}};
  auto c = ParseGemma4TextConfig(doc, "hub.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->global_head_dim, 32);
  EXPECT_EQ(c->num_global_kv_heads, 1);
  EXPECT_EQ(c->use_bidirectional_attention, "vision");
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{1, 106}));
  EXPECT_TRUE(IsGemma4Config(doc));
}

TEST(Gemma4ConfigTest, DefaultsFollowHf) {
  // Without global sizes: global_head_dim 512 and, without k_eq_v, the
  // sliding KV head count (HF ignores num_global_key_value_heads then).
  json doc = {{"model_type", "gemma4_text"},
              {"hidden_size_per_layer_input", 0},
              {"num_hidden_layers", 7},
              {"num_global_key_value_heads", 1}};
  auto c = ParseGemma4TextConfig(doc, "d.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->global_head_dim, 512);
  EXPECT_EQ(c->num_global_kv_heads, c->num_kv_heads);
  // 5 sliding : 1 full, last forced full.
  std::vector<LayerType> want = {LayerType::kSliding, LayerType::kSliding,
                                 LayerType::kSliding, LayerType::kSliding,
                                 LayerType::kSliding, LayerType::kFull,
                                 LayerType::kFull};
  EXPECT_EQ(c->layer_types, want);
  EXPECT_EQ(c->sliding_window, 512);
  EXPECT_EQ(c->vocab_size, 262144);
}

TEST(Gemma4ConfigTest, ErrorsNameTheKey) {
  json doc = Saved517();
  doc.erase("hidden_size_per_layer_input");  // HF default 256 = PLE on
  auto c = ParseGemma4TextConfig(doc, "x.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("x.json: hidden_size_per_layer_input"),
            std::string::npos)
      << c.status();

  doc = Saved517();
  doc["num_experts"] = "many";
  c = ParseGemma4TextConfig(doc, "x.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(
      c.status().message().find("x.json: num_experts: expected an integer"),
      std::string::npos)
      << c.status();

  doc = Saved517();
  doc["top_k_experts"] = 5;
  c = ParseGemma4TextConfig(doc, "x.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("top_k_experts"), std::string::npos);

  doc = Saved517();
  doc["per_layer_config"] = {{"0", {{"head_dim", 8}}}};
  c = ParseGemma4TextConfig(doc, "x.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("per_layer_config.0"), std::string::npos);

  doc = Saved517();
  doc["text_config"] = json::array();
  c = ParseGemma4TextConfig(doc, "x.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("text_config"), std::string::npos);
}

TEST(Gemma4ConfigTest, Preset26bA4b) {
  auto c = Gemma4Preset("google/gemma-4-26B-A4B-it");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 2816);
  EXPECT_EQ(c->num_layers, 30);
  EXPECT_EQ(c->num_heads, 16);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->num_global_kv_heads, 2);
  EXPECT_EQ(c->global_head_dim, 512);
  EXPECT_EQ(c->num_experts, 128);
  EXPECT_EQ(c->top_k_experts, 8);
  EXPECT_EQ(c->moe_intermediate_size, 704);
  EXPECT_EQ(c->intermediate_size, 2112);
  EXPECT_EQ(c->sliding_window, 1024);
  int full = 0;
  for (size_t i = 0; i < c->layer_types.size(); ++i) {
    if (c->layer_types[i] == LayerType::kFull) {
      ++full;
      EXPECT_EQ(i % 6, 5u);
    }
  }
  EXPECT_EQ(full, 5);
  EXPECT_FALSE(Gemma4Preset("31b").ok());
}

TEST(Gemma4ConfigTest, JsonRoundTrip) {
  auto preset = Gemma4Preset("26b-a4b");
  ASSERT_TRUE(preset.ok());
  auto back = ParseGemma4TextConfig(Gemma4TextConfigToJson(*preset), "rt");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(*back == *preset);
  auto tiny = ParseGemma4TextConfig(Saved517(), "t");
  ASSERT_TRUE(tiny.ok());
  auto tiny_back = ParseGemma4TextConfig(Gemma4TextConfigToJson(*tiny), "rt");
  ASSERT_TRUE(tiny_back.ok()) << tiny_back.status();
  EXPECT_TRUE(*tiny_back == *tiny);
}

}  // namespace
}  // namespace gemma
