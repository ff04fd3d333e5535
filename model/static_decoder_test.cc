// The static-cache decoder on the CPU: its steps equal the growing cache's
// decode, the graph warm-up leaves no trace, and its limits hold. Parity with
// transformers (and CUDA graph replay on the GPU) is in tests/parity/.
#include "model/static_decoder.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/vl_model.h"

namespace gemma {
namespace {

// Two sliding layers (window 4) around a full one, GQA 4:2, text only.
ModelConfig TinyText() {
  ModelConfig c;
  c.model_type = "gemma3_text";
  TextConfig& t = c.text;
  t.vocab_size = 64, t.hidden_size = 16, t.intermediate_size = 24;
  t.num_layers = 3;
  t.num_heads = 4, t.num_kv_heads = 2, t.head_dim = 8;
  t.query_pre_attn_scalar = 8;
  t.sliding_window = 4;
  t.layer_types = {LayerType::kSliding, LayerType::kFull, LayerType::kSliding};
  return c;
}

Gemma3Model RandomModel() {
  torch::manual_seed(3);
  Gemma3Model model(TinyText());
  torch::NoGradGuard g;
  for (auto& p : model->parameters()) p.copy_(torch::randn(p.sizes()) * 0.3);
  model->eval();
  return model;
}

// A batch of two, the second row left-padded by two.
ModelInputs Prompt() {
  ModelInputs in;
  in.input_ids = torch::tensor({{2, 7, 9, 11, 13}, {0, 0, 2, 5, 8}});
  in.attention_mask = torch::tensor({{1, 1, 1, 1, 1}, {0, 0, 1, 1, 1}});
  in.position_ids = torch::tensor({{0, 1, 2, 3, 4}, {0, 0, 0, 1, 2}});
  return in;
}

// Greedy decoding of n tokens with the growing cache: the logits [B, V] of
// each step (the first from the prompt).
std::vector<torch::Tensor> GrowingCacheLogits(Gemma3Model& model, int64_t n) {
  torch::NoGradGuard g;
  ModelInputs in = Prompt();
  KvCache cache = model->NewCache();
  std::vector<torch::Tensor> out{model->forward(in, &cache).select(1, -1)};
  torch::Tensor mask = in.attention_mask, pos = in.position_ids.narrow(1, 4, 1);
  for (int64_t i = 1; i < n; ++i) {
    ModelInputs step;
    step.input_ids = out.back().argmax(-1).unsqueeze(1);
    mask = torch::cat({mask, torch::ones({2, 1}, torch::kLong)}, 1);
    pos = pos + 1;
    step.attention_mask = mask;
    step.position_ids = pos;
    out.push_back(model->forward(step, &cache).select(1, -1));
  }
  return out;
}

TEST(StaticDecoderTest, StepsMatchTheGrowingCachePastTheWindow) {
  Gemma3Model model = RandomModel();
  const int64_t n = 14;  // 5 + 13 fed tokens: past the window (4) thrice
  std::vector<torch::Tensor> ref = GrowingCacheLogits(model, n);
  torch::NoGradGuard g;
  StaticDecoder decoder(model, 5 + n);
  torch::Tensor logits = decoder.Prefill(Prompt());
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_TRUE(torch::allclose(logits, ref[i], 1e-5, 1e-5))
        << "step " << i << ": max diff " << (logits - ref[i]).abs().max();
    if (i + 1 == n) break;
    decoder.SetTokens(ref[i].argmax(-1));
    logits = decoder.Step();
  }
  EXPECT_EQ(decoder.fed(), 5 + n - 1);
}

TEST(StaticDecoderTest, WarmUpLeavesNoTrace) {
  Gemma3Model model = RandomModel();
  torch::NoGradGuard g;
  StaticDecoder plain(model, 16), warmed(model, 16);
  torch::Tensor a = plain.Prefill(Prompt());
  torch::Tensor b = warmed.Prefill(Prompt());
  warmed.SetTokens(torch::tensor({40, 41}));  // garbage for the warm-up
  warmed.WarmUp(StaticDecoder::kWarmupSteps);
  EXPECT_EQ(warmed.fed(), 5);
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(torch::equal(a, b)) << "step " << i;
    torch::Tensor next = a.argmax(-1);
    plain.SetTokens(next);
    warmed.SetTokens(next);
    a = plain.Step();
    b = warmed.Step();
  }
}

TEST(StaticDecoderTest, LimitsAndCpuFallback) {
  Gemma3Model model = RandomModel();
  torch::NoGradGuard g;
  StaticDecoder small(model, 6);
  EXPECT_THROW(small.Step(), c10::Error);  // before Prefill
  small.Prefill(Prompt());
  EXPECT_THROW(small.Prefill(Prompt()), c10::Error);
  EXPECT_FALSE(small.CaptureGraph());  // the CPU has no graphs
  EXPECT_FALSE(small.graph_captured());
  small.SetTokens(torch::tensor({1, 2}));
  small.Step();                            // slot 5, the last one
  EXPECT_THROW(small.Step(), c10::Error);  // full
  EXPECT_THROW(small.SetTokens(torch::tensor({1})), c10::Error);
  StaticDecoder tiny(model, 4);
  EXPECT_THROW(tiny.Prefill(Prompt()), c10::Error);  // 5 tokens, 4 slots
}

TEST(StaticKvCacheTest, HostPositionsThenStepIndex) {
  TextConfig t = TinyText().text;
  KvCache cache = KvCache::Static(t, 8);
  EXPECT_TRUE(cache.is_static());
  torch::Tensor k = torch::arange(3, torch::kFloat).view({1, 1, 3, 1}) + 1;
  auto [k3, v3] = cache.layer(0)->Update(k, -k);
  EXPECT_EQ(k3.size(2), 3);  // the written slots, window or not
  EXPECT_EQ(cache.MaskSizes(4, 1), (std::pair<int64_t, int64_t>{0, 4}));
  torch::Tensor index = torch::tensor({5}, torch::kLong);
  cache.SetStepIndex(index);
  auto [all_k, all_v] = cache.layer(0)->Update(
      torch::full({1, 1, 1, 1}, 9.0f), torch::full({1, 1, 1, 1}, -9.0f));
  EXPECT_TRUE(torch::equal(
      all_k.flatten(),
      torch::tensor({1.0f, 2.0f, 3.0f, 0.0f, 0.0f, 9.0f, 0.0f, 0.0f})));
  EXPECT_EQ(all_v.size(2), 8);
  EXPECT_THROW(cache.layer(0)->Update(torch::ones({1, 1, 2, 1}),
                                      torch::ones({1, 1, 2, 1})),
               c10::Error);  // a step writes one token
  KvCache growing(t);
  EXPECT_THROW(growing.SetStepIndex(index), c10::Error);
}

TEST(StaticStepBiasTest, EqualsBuildAttentionBiasForOneQuery) {
  torch::Tensor padding = torch::tensor(
      {{1, 1, 1, 1, 1, 1, 1, 1, 1, 0}, {0, 0, 1, 1, 1, 1, 1, 1, 1, 1}});
  for (int64_t window : {0, 3}) {
    for (int64_t index : {2, 5, 8}) {
      MaskSpec spec;
      spec.batch = 2;
      spec.q_len = 1;
      spec.q_offset = index;
      spec.kv_len = 10;
      spec.sliding_window = window;
      spec.padding = padding;
      torch::Tensor want = BuildAttentionBias(spec, torch::kFloat);
      torch::Tensor got = StaticStepBias(torch::tensor({index}), padding,
                                         window, torch::kFloat);
      EXPECT_TRUE(torch::equal(got, want))
          << "window " << window << " index " << index;
    }
  }
}

}  // namespace
}  // namespace gemma
