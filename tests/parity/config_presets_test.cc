// Our Gemma 3 presets against the published shapes (reference/gemma.md) and
// against transformers' own config handling: make_reference.py writes, per
// model, the hub-style sparse config.json (original release shape) and
// Gemma3Config(...).to_dict() (the newer shape with every default filled in by
// transformers). Both must parse to the preset.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "model/config.h"

namespace gemma {
namespace {

std::string DataDir() {
  const char* env = std::getenv("GEMMA_PARITY_DATA");
  return env != nullptr ? env : "parity_data";
}

struct Published {
  const char* name;
  int64_t hidden, mlp, layers, heads, kv_heads, head_dim;
  double query_pre_attn_scalar;
};

// The table in /work/shared/reference/gemma.md.
constexpr Published kPublished[] = {
    {"4b", 2560, 10240, 34, 8, 4, 256, 256},
    {"12b", 3840, 15360, 48, 16, 8, 256, 256},
    {"27b", 5376, 21504, 62, 32, 16, 128, 168},
};

void PrintTo(const Published& p, std::ostream* os) { *os << p.name; }

class PresetTest : public ::testing::TestWithParam<Published> {};

TEST_P(PresetTest, MatchesPublishedTable) {
  const Published& p = GetParam();
  auto preset = Gemma3Preset(p.name);
  ASSERT_TRUE(preset.ok()) << preset.status();
  const TextConfig& t = preset->text;
  EXPECT_EQ(t.hidden_size, p.hidden);
  EXPECT_EQ(t.intermediate_size, p.mlp);
  EXPECT_EQ(t.num_layers, p.layers);
  EXPECT_EQ(t.num_heads, p.heads);
  EXPECT_EQ(t.num_kv_heads, p.kv_heads);
  EXPECT_EQ(t.head_dim, p.head_dim);
  EXPECT_EQ(t.query_pre_attn_scalar, p.query_pre_attn_scalar);
  EXPECT_EQ(t.vocab_size, 262208);
  EXPECT_EQ(t.sliding_window, 1024);
  EXPECT_EQ(t.rope_full, (RopeParams{"linear", 1e6, 8.0}));
  EXPECT_EQ(t.rope_sliding, (RopeParams{"default", 1e4, 1.0}));
  for (int64_t i = 0; i < t.num_layers; ++i) {
    EXPECT_EQ(t.layer_types[i],
              (i + 1) % 6 == 0 ? LayerType::kFull : LayerType::kSliding)
        << i;
  }
  ASSERT_TRUE(preset->is_vl());
  EXPECT_EQ(preset->vision->hidden_size, 1152);
  EXPECT_EQ(preset->vision->num_layers, 27);
  EXPECT_EQ(preset->vision->num_patches(), 4096);
  EXPECT_EQ(preset->mm_tokens_per_image, 256);
  EXPECT_EQ(preset->image_token_id, 262144);
}

TEST_P(PresetTest, EqualsHubSparseConfig) {
  auto preset = Gemma3Preset(GetParam().name);
  ASSERT_TRUE(preset.ok()) << preset.status();
  auto sparse = LoadModelConfig(DataDir() + "/presets/" + GetParam().name +
                                "/sparse.json");
  ASSERT_TRUE(sparse.ok()) << sparse.status();
  EXPECT_TRUE(SameArchitecture(*preset, *sparse));
  EXPECT_EQ(sparse->eos_token_ids, (std::vector<int64_t>{1, 106}));
}

TEST_P(PresetTest, EqualsTransformersDefaults) {
  auto preset = Gemma3Preset(GetParam().name);
  ASSERT_TRUE(preset.ok()) << preset.status();
  auto full =
      LoadModelConfig(DataDir() + "/presets/" + GetParam().name + "/full.json");
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_TRUE(SameArchitecture(*preset, *full));
  EXPECT_EQ(full->text.layer_types, preset->text.layer_types);
  EXPECT_EQ(full->text.rope_full, preset->text.rope_full);
  EXPECT_EQ(full->vision->layer_norm_eps, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Published, PresetTest, ::testing::ValuesIn(kPublished),
                         [](const auto& info) {
                           return std::string("gemma3_") + info.param.name;
                         });

}  // namespace
}  // namespace gemma
