// Unit tests of the Gemma 3 building blocks. End-to-end numerics against
// transformers live in tests/parity/; these pin the rules piece by piece.
#include "model/layers.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>

#include "model/generate.h"
#include "model/kv_cache.h"
#include "model/vl_model.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

TEST(RMSNormTest, FusedEqualsElementwiseValueAndGradients) {
  torch::manual_seed(11);
  torch::Tensor x = torch::randn({3, 5, 16});
  torch::Tensor w = torch::randn({16}) * 0.1;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    torch::Tensor x1 = x.to(dtype).clone().requires_grad_(true);
    torch::Tensor w1 = w.clone().requires_grad_(true);
    torch::Tensor x2 = x.to(dtype).clone().requires_grad_(true);
    torch::Tensor w2 = w.clone().requires_grad_(true);
    torch::Tensor y1 = GemmaRmsNorm(x1, w1, 1e-6, /*fused=*/true);
    torch::Tensor y2 = GemmaRmsNorm(x2, w2, 1e-6, /*fused=*/false);
    EXPECT_EQ(y1.scalar_type(), dtype);
    torch::Tensor g = torch::randn({3, 5, 16}).to(dtype);
    (y1 * g).sum().backward();
    (y2 * g).sum().backward();
    const double tol = dtype == torch::kFloat ? 1e-6 : 1e-2;
    EXPECT_TRUE(
        torch::allclose(y1.to(torch::kFloat), y2.to(torch::kFloat), tol, tol));
    EXPECT_TRUE(torch::allclose(x1.grad().to(torch::kFloat),
                                x2.grad().to(torch::kFloat), tol, tol));
    EXPECT_TRUE(torch::allclose(w1.grad(), w2.grad(), 1e-4, 1e-4));
  }
}

TEST(RMSNormTest, ScalesByOnePlusWeightInFloat32) {
  RMSNorm norm(RMSNormOptions(4).eps(1e-6));
  torch::Tensor x = torch::tensor({{1.0f, -2.0f, 3.0f, -4.0f}});
  torch::Tensor rms = (x.pow(2).mean(-1, true) + 1e-6).rsqrt();
  EXPECT_TRUE(torch::allclose(norm(x), x * rms));  // w = 0: plain normalisation
  {
    torch::NoGradGuard g;
    norm->weight.copy_(torch::tensor({0.5f, -1.0f, 0.0f, 2.0f}));
  }
  torch::Tensor expected = x * rms * torch::tensor({1.5f, 0.0f, 1.0f, 3.0f});
  EXPECT_TRUE(torch::allclose(norm(x), expected));
  EXPECT_EQ(norm(x.to(torch::kBFloat16)).scalar_type(), torch::kBFloat16);
}

TEST(RopeTest, LinearScalingDividesFrequencies) {
  torch::Tensor base =
      RopeInverseFrequencies(8, RopeParams{"default", 10000.0, 1.0});
  torch::Tensor scaled =
      RopeInverseFrequencies(8, RopeParams{"linear", 10000.0, 8.0});
  EXPECT_TRUE(
      torch::allclose(base, torch::tensor({1.0f, 0.1f, 0.01f, 0.001f})));
  EXPECT_TRUE(torch::allclose(scaled * 8, base));
  // Position 0 leaves vectors unchanged; rotation preserves the norm.
  auto [cos, sin] = RopeCosSin(base, torch::tensor({{0, 5}}), torch::kFloat);
  torch::Tensor x = torch::randn({1, 2, 2, 8});
  torch::Tensor y = ApplyRope(x, cos, sin);
  EXPECT_TRUE(torch::allclose(y.select(2, 0), x.select(2, 0)));
  EXPECT_TRUE(torch::allclose(y.norm(2, -1), x.norm(2, -1), 1e-5, 1e-5));
}

TEST(MaskTest, BlockIdsFromTokenTypes) {
  torch::Tensor tt =
      torch::tensor({{0, 1, 1, 0, 1, 1, 1, 0}, {1, 1, 0, 0, 0, 0, 1, 0}});
  torch::Tensor expected = torch::tensor(
      {{-1, 0, 0, -1, 1, 1, 1, -1}, {0, 0, -1, -1, -1, -1, 1, -1}});
  EXPECT_TRUE(torch::equal(BlockIdsFromTokenTypes(tt), expected));
}

torch::Tensor Allowed(const MaskSpec& spec) {
  return BuildAttentionBias(spec, torch::kFloat)
      .eq(0)
      .squeeze(1)
      .to(torch::kLong);
}

TEST(MaskTest, SlidingWindowBound) {
  MaskSpec spec;
  spec.q_len = spec.kv_len = 5;
  spec.sliding_window = 3;  // i - 3 < j <= i
  torch::Tensor expected = torch::tensor({{{1, 0, 0, 0, 0},
                                           {1, 1, 0, 0, 0},
                                           {1, 1, 1, 0, 0},
                                           {0, 1, 1, 1, 0},
                                           {0, 0, 1, 1, 1}}});
  EXPECT_TRUE(torch::equal(Allowed(spec), expected));
  torch::Tensor bias = BuildAttentionBias(spec, torch::kFloat);
  EXPECT_EQ(bias.min().item<float>(), std::numeric_limits<float>::lowest());
}

TEST(MaskTest, ImageBlocksAreBidirectionalOnFullAndWindowedOnSliding) {
  MaskSpec spec;
  spec.q_len = spec.kv_len = 6;
  // text, image(0) x3, text, text
  spec.block_ids = torch::tensor({{-1, 0, 0, 0, -1, -1}});
  torch::Tensor full = torch::tensor({{{1, 0, 0, 0, 0, 0},
                                       {1, 1, 1, 1, 0, 0},
                                       {1, 1, 1, 1, 0, 0},
                                       {1, 1, 1, 1, 0, 0},
                                       {1, 1, 1, 1, 1, 0},
                                       {1, 1, 1, 1, 1, 1}}});
  EXPECT_TRUE(torch::equal(Allowed(spec), full));
  // (causal OR block) AND j > i - 2: the window only bounds keys from below,
  // so a query still sees later tokens of its own image.
  spec.sliding_window = 2;
  torch::Tensor sliding = torch::tensor({{{1, 0, 0, 0, 0, 0},
                                          {1, 1, 1, 1, 0, 0},
                                          {0, 1, 1, 1, 0, 0},
                                          {0, 0, 1, 1, 0, 0},
                                          {0, 0, 0, 1, 1, 0},
                                          {0, 0, 0, 0, 1, 1}}});
  EXPECT_TRUE(torch::equal(Allowed(spec), sliding));
}

TEST(MaskTest, PaddingHidesKeysAndOffsetsFollowTheCache) {
  MaskSpec spec;
  spec.batch = 2;
  spec.q_len = 1;
  spec.q_offset = 4;   // fifth token
  spec.kv_offset = 2;  // a sliding layer holding tokens 2, 3 (+ the new one)
  spec.kv_len = 3;
  spec.sliding_window = 3;
  spec.padding = torch::tensor({{1, 1, 1, 1, 1}, {0, 0, 0, 1, 1}});
  torch::Tensor expected = torch::tensor({{{1, 1, 1}}, {{0, 1, 1}}});
  EXPECT_TRUE(torch::equal(Allowed(spec), expected));
}

TEST(CausalPlanTest, DenseRowsAreImageBlocksMergedOverTheBatch) {
  torch::Tensor types = torch::tensor(
      {{0, 1, 1, 0, 0, 0, 1, 1, 0, 0}, {0, 0, 1, 1, 0, 0, 0, 0, 0, 1}},
      torch::kLong);
  CausalPlan plan = BuildCausalPlan(BlockIdsFromTokenTypes(types), 4);
  EXPECT_EQ(plan.window, 4);
  using Range = std::pair<int64_t, int64_t>;
  EXPECT_THAT(plan.dense_rows,
              ::testing::ElementsAre(Range{1, 4}, Range{6, 8}, Range{9, 10}));
  EXPECT_TRUE(BuildCausalPlan(torch::Tensor(), 0).dense_rows.empty());
}

// The planned attention (flash with a window, image rows against the bias)
// against the bias path in fp32: values and gradients. Needs a GPU.
TEST(CausalPlanTest, PlannedAttentionMatchesTheBiasOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const AttentionKernel before = GetAttentionKernel();
  SetAttentionKernel(AttentionKernel::kSdpa);
  torch::manual_seed(12);
  const torch::Device dev(torch::kCUDA);
  const int64_t b = 2, l = 300, h = 128, hd = 256;
  torch::Tensor types = torch::zeros({b, l}, torch::kLong);
  types[0].narrow(0, 20, 70).fill_(1);
  types[1].narrow(0, 100, 40).fill_(1);
  types[1].narrow(0, 150, 30).fill_(1);
  torch::Tensor blocks = BlockIdsFromTokenTypes(types).to(dev);
  RopeParams rope;
  torch::Tensor pos = torch::arange(l, torch::kLong).unsqueeze(0).to(dev);
  for (int64_t window : {int64_t{64}, int64_t{0}}) {
    Attention attn(AttentionOptions(h, 8, 4, hd));
    attn->to(dev);
    MaskSpec spec;
    spec.batch = b;
    spec.q_len = l;
    spec.kv_len = l;
    spec.sliding_window = window;
    spec.block_ids = blocks;
    spec.device = dev;
    torch::Tensor x = torch::randn({b, l, h}, torch::TensorOptions(dev));
    torch::Tensor gy = torch::randn({b, l, h}, torch::TensorOptions(dev));
    // Reference: fp32, bias path.
    auto [cf, sf] =
        RopeCosSin(RopeInverseFrequencies(hd, rope), pos, torch::kFloat);
    torch::Tensor xf = x.clone().requires_grad_(true);
    torch::Tensor ref =
        attn->forward(xf, cf, sf, BuildAttentionBias(spec, torch::kFloat));
    (ref * gy).sum().backward();
    torch::Tensor ref_wgrad = attn->qkv->weight.grad().clone();
    attn->zero_grad();
    // Planned, bf16.
    attn->to(torch::kBFloat16);
    auto [cb, sb] =
        RopeCosSin(RopeInverseFrequencies(hd, rope), pos, torch::kBFloat16);
    CausalPlan plan = BuildCausalPlan(blocks, window);
    torch::Tensor xb = x.to(torch::kBFloat16).requires_grad_(true);
    torch::Tensor out = attn->forward(
        xb, cb, sb, BuildAttentionBias(spec, torch::kBFloat16), nullptr, &plan);
    (out * gy.to(torch::kBFloat16)).sum().backward();
    auto rel = [](const torch::Tensor& a, const torch::Tensor& r) {
      return ((a.to(torch::kFloat) - r).norm() / r.norm()).item<double>();
    };
    EXPECT_LT(rel(out, ref), 2e-2) << "window " << window;
    EXPECT_LT(rel(xb.grad(), xf.grad()), 3e-2) << "window " << window;
    EXPECT_LT(rel(attn->qkv->weight.grad(), ref_wgrad), 3e-2)
        << "window " << window;
  }
  SetAttentionKernel(before);
}

TEST(MaskTest, PackedSegmentsFromPositions) {
  EXPECT_FALSE(
      SegmentIdsFromPositions(torch::tensor({{0, 1, 2, 3}}), 2).defined());
  torch::Tensor seg =
      SegmentIdsFromPositions(torch::tensor({{0, 1, 0, 1, 2}}), 1);
  EXPECT_TRUE(torch::equal(seg, torch::tensor({{0, 0, 1, 1, 1}})));
  MaskSpec spec;
  spec.q_len = spec.kv_len = 5;
  spec.segment_ids = seg;
  torch::Tensor allowed = Allowed(spec);
  EXPECT_EQ(allowed[0][2][1].item<int64_t>(),
            0);  // no attention across sequences
  EXPECT_EQ(allowed[0][4][2].item<int64_t>(), 1);
}

TEST(KvCacheTest, SlidingLayersKeepWindowMinusOne) {
  TextConfig t;
  t.num_layers = 2;
  t.layer_types = {LayerType::kSliding, LayerType::kFull};
  t.sliding_window = 4;
  KvCache cache(t);
  torch::Tensor k = torch::arange(6, torch::kFloat).view({1, 1, 6, 1});
  for (int64_t i = 0; i < 2; ++i) {
    auto [all_k, all_v] = cache.layer(i)->Update(k, k);
    EXPECT_EQ(all_k.size(2), 6);
  }
  EXPECT_EQ(cache.layer(0)->cached(), 3);
  EXPECT_EQ(cache.layer(1)->cached(), 6);
  EXPECT_EQ(cache.seq_len(), 6);
  EXPECT_EQ(cache.MaskSizes(4, 1), (std::pair<int64_t, int64_t>{3, 4}));
  EXPECT_EQ(cache.MaskSizes(0, 1), (std::pair<int64_t, int64_t>{0, 7}));
  auto [all_k, all_v] = cache.layer(0)->Update(torch::full({1, 1, 1, 1}, 6.0f),
                                               torch::zeros({1, 1, 1, 1}));
  EXPECT_TRUE(
      torch::equal(all_k.flatten(), torch::tensor({3.0f, 4.0f, 5.0f, 6.0f})));
}

// Many decode steps of mixed sizes (buffer growth, sliding compaction): each
// Update returns exactly the held tokens plus the new ones, in order.
TEST(KvCacheTest, InPlaceBufferMatchesConcatenationOverManySteps) {
  for (int64_t window : {0, 5, 64}) {
    LayerKvCache layer(window);
    std::vector<float> history;
    float next = 0;
    for (int step = 0; step < 300; ++step) {
      const int64_t l = step == 0 ? 7 : (step % 17 == 0 ? 3 : 1);
      torch::Tensor k =
          torch::arange(next, next + l, torch::kFloat).view({1, 1, l, 1});
      torch::Tensor v = -k;
      const int64_t held_before =
          window > 0 ? std::min<int64_t>(history.size(), window - 1)
                     : static_cast<int64_t>(history.size());
      std::vector<float> expect(history.end() - held_before, history.end());
      for (int64_t i = 0; i < l; ++i) {
        history.push_back(next + i);
        expect.push_back(next + i);
      }
      next += l;
      auto [all_k, all_v] = layer.Update(k, v);
      ASSERT_TRUE(torch::equal(all_k.flatten(), torch::tensor(expect)))
          << "window " << window << " step " << step;
      ASSERT_TRUE(torch::equal(all_v.flatten(), -torch::tensor(expect)));
    }
    EXPECT_EQ(layer.seen(), static_cast<int64_t>(history.size()));
  }
}

// Tensor parallelism only re-slices the modules: with the contract's split
// rules (qkv by whole KV groups, gate_up by blocks, o/down by columns), the sum
// of the ranks' partial outputs equals the unsplit module's output.
TEST(TensorParallelSliceTest, AttentionSplitsByKvGroups) {
  const int64_t hidden = 24, nq = 6, nkv = 2, hd = 4, tp = 2;
  auto opts = [&](int64_t q, int64_t kv) {
    return AttentionOptions(hidden, q, kv, hd).query_pre_attn_scalar(10);
  };
  Attention full(opts(nq, nkv));
  torch::Tensor x = torch::randn({2, 5, hidden});
  auto [cos, sin] = RopeCosSin(RopeInverseFrequencies(hd, RopeParams{}),
                               torch::arange(5).unsqueeze(0), torch::kFloat);
  MaskSpec spec;
  spec.batch = 2;
  spec.q_len = spec.kv_len = 5;
  torch::Tensor bias = BuildAttentionBias(spec, torch::kFloat);
  torch::NoGradGuard g;
  for (auto& p : full->parameters()) p.copy_(torch::randn(p.sizes()) * 0.3);
  torch::Tensor sum = torch::zeros({2, 5, hidden});
  const int64_t rows = (nq + 2 * nkv) * hd / tp, cols = nq * hd / tp;
  for (int64_t r = 0; r < tp; ++r) {
    Attention local(opts(nq / tp, nkv / tp));
    local->qkv->weight.copy_(full->qkv->weight.narrow(0, r * rows, rows));
    local->o->weight.copy_(full->o->weight.narrow(1, r * cols, cols));
    local->q_norm->weight.copy_(full->q_norm->weight);
    local->k_norm->weight.copy_(full->k_norm->weight);
    sum += local(x, cos, sin, bias);
  }
  EXPECT_TRUE(torch::allclose(sum, full(x, cos, sin, bias), 1e-5, 1e-5));
}

TEST(TensorParallelSliceTest, MlpSplitsGateAndUpBlocks) {
  const int64_t hidden = 8, inter = 12, tp = 3, part = inter / tp;
  GatedMlp full(GatedMlpOptions(hidden, inter));
  torch::NoGradGuard g;
  torch::Tensor x = torch::randn({2, 3, hidden});
  torch::Tensor sum = torch::zeros({2, 3, hidden});
  for (int64_t r = 0; r < tp; ++r) {
    GatedMlp local(GatedMlpOptions(hidden, part));
    local->gate_up->weight.copy_(
        torch::cat({full->gate_up->weight.narrow(0, r * part, part),
                    full->gate_up->weight.narrow(0, inter + r * part, part)}));
    local->down->weight.copy_(full->down->weight.narrow(1, r * part, part));
    sum += local(x);
  }
  EXPECT_TRUE(torch::allclose(sum, full(x), 1e-5, 1e-5));
}

ModelConfig TinyVl() {
  ModelConfig c;
  c.model_type = "gemma3";
  TextConfig& t = c.text;
  t.vocab_size = 64, t.hidden_size = 16, t.intermediate_size = 24,
  t.num_layers = 2;
  t.num_heads = 2, t.num_kv_heads = 1, t.head_dim = 8,
  t.query_pre_attn_scalar = 8;
  t.sliding_window = 4;
  t.layer_types = {LayerType::kSliding, LayerType::kFull};
  VisionConfig v;
  v.hidden_size = 8, v.intermediate_size = 12, v.num_layers = 1,
  v.num_heads = 2;
  v.image_size = 8, v.patch_size = 2;
  c.vision = v;
  c.mm_tokens_per_image = 4;
  c.image_token_id = 60;
  return c;
}

std::map<std::string, torch::Tensor> RandomWeights(Gemma3Model& model) {
  std::map<std::string, torch::Tensor> w;
  for (const auto& p : model->named_parameters())
    w[p.key()] = torch::randn(p.value().sizes()) * 0.3;
  return w;
}

TEST(LoadParametersTest, ReportsMissingUnexpectedAndWrongShape) {
  Gemma3Model model(TinyVl());
  auto weights = RandomWeights(model);
  ASSERT_TRUE(LoadParameters(*model, weights).ok());
  EXPECT_TRUE(torch::equal(model->text->embed->weight,
                           weights.at("text.embed.weight")));
  EXPECT_EQ(model->named_parameters().size(), weights.size());

  auto broken = weights;
  broken.erase("text.layers.1.attn.qkv.weight");
  broken["text.layers.0.mlp.gate_up.weight"] = torch::zeros({5, 5});
  broken["text.lm_head.weight"] = torch::zeros({64, 16});
  absl::Status st = LoadParameters(*model, broken);
  ASSERT_FALSE(st.ok());
  const std::string msg(st.message());
  EXPECT_THAT(msg, HasSubstr("missing: text.layers.1.attn.qkv.weight"));
  EXPECT_THAT(
      msg,
      HasSubstr(
          "text.layers.0.mlp.gate_up.weight (got [5, 5], expected [48, 16])"));
  EXPECT_THAT(msg, HasSubstr("unexpected: text.lm_head.weight"));
  // Nothing was copied.
  EXPECT_TRUE(torch::equal(model->text->layers[0]
                               ->as<Gemma3DecoderLayerImpl>()
                               ->mlp->gate_up->weight,
                           weights.at("text.layers.0.mlp.gate_up.weight")));
}

TEST(Gemma3ModelTest, NamesFollowTheContract) {
  Gemma3Model model(TinyVl());
  auto params = model->named_parameters();
  for (const char* name : {"text.embed.weight",
                           "text.final_norm.weight",
                           "text.layers.0.input_norm.weight",
                           "text.layers.0.attn.qkv.weight",
                           "text.layers.0.attn.o.weight",
                           "text.layers.0.attn.q_norm.weight",
                           "text.layers.0.attn.k_norm.weight",
                           "text.layers.0.post_attn_norm.weight",
                           "text.layers.0.pre_mlp_norm.weight",
                           "text.layers.0.mlp.gate_up.weight",
                           "text.layers.0.mlp.down.weight",
                           "text.layers.0.post_mlp_norm.weight",
                           "vision.patch_embed.weight",
                           "vision.patch_embed.bias",
                           "vision.pos_embed.weight",
                           "vision.layers.0.ln1.weight",
                           "vision.layers.0.ln1.bias",
                           "vision.layers.0.attn.qkv.weight",
                           "vision.layers.0.attn.qkv.bias",
                           "vision.layers.0.attn.o.weight",
                           "vision.layers.0.ln2.bias",
                           "vision.layers.0.mlp.fc1.weight",
                           "vision.layers.0.mlp.fc2.bias",
                           "vision.post_norm.weight",
                           "projector.norm.weight",
                           "projector.proj.weight"}) {
    EXPECT_TRUE(params.contains(name)) << name;
  }
  EXPECT_EQ(params["text.layers.0.attn.qkv.weight"].sizes(),
            (c10::IntArrayRef{(2 + 2) * 8, 16}));
  EXPECT_EQ(params["projector.proj.weight"].sizes(), (c10::IntArrayRef{8, 16}));
  EXPECT_EQ(params["vision.pos_embed.weight"].sizes(),
            (c10::IntArrayRef{16, 8}));
}

TEST(Gemma3ModelTest, EmbeddingScaleIsRoundedToWeightDtype) {
  TextConfig t;
  t.vocab_size = 3, t.hidden_size = 2560, t.intermediate_size = 8,
  t.num_layers = 1;
  t.num_heads = 1, t.num_kv_heads = 1, t.head_dim = 2;
  t.layer_types = {LayerType::kFull};
  Gemma3TextModel text(t);
  text->to(torch::kBFloat16);
  {
    torch::NoGradGuard g;
    text->embed->weight.fill_(1.0);
  }
  torch::Tensor e = text->Embed(torch::tensor({{1}}));
  EXPECT_EQ(e.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(e[0][0][0].item<float>(), 50.5f);  // sqrt(2560) = 50.596 in fp32
}

TEST(Gemma3ModelTest, ImageTokenCountMismatchIsAnError) {
  Gemma3Model model(TinyVl());
  ASSERT_TRUE(LoadParameters(*model, RandomWeights(model)).ok());
  ModelInputs in;
  in.input_ids =
      torch::tensor({{2, 60, 60, 60, 5}});  // 3 image tokens, 4 needed
  in.pixel_values = torch::randn({1, 3, 8, 8});
  auto out = model->Forward(in);
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(
      std::string(out.status().message()),
      HasSubstr(
          "image features and image tokens do not match: 3 image tokens"));
  in.input_ids = torch::tensor({{2, 60, 60, 60, 60, 5}});
  in.token_type_ids = in.input_ids.eq(60).to(torch::kLong);
  auto ok = model->Forward(in);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->sizes(), (c10::IntArrayRef{1, 6, 64}));
}

TEST(Gemma3ModelTest, ChunkedDecodeWithCacheEqualsFullForward) {
  Gemma3Model model(TinyVl());
  ASSERT_TRUE(LoadParameters(*model, RandomWeights(model)).ok());
  torch::NoGradGuard g;
  torch::Tensor ids = torch::randint(0, 50, {2, 11});
  ModelInputs all;
  all.input_ids = ids;
  torch::Tensor full = model->forward(all);
  KvCache cache = model->NewCache();
  std::vector<torch::Tensor> parts;
  for (auto [start, len] :
       {std::pair<int64_t, int64_t>{0, 5}, {5, 1}, {6, 3}, {9, 2}}) {
    ModelInputs chunk;
    chunk.input_ids = ids.narrow(1, start, len);
    parts.push_back(model->forward(chunk, &cache));
  }
  EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), full, 1e-5, 1e-5));
  EXPECT_EQ(cache.layer(0)->cached(), 3);  // window 4 - 1
  EXPECT_EQ(cache.layer(1)->cached(), 11);
}

TEST(SamplingTest, TopKOneIsGreedyAndSeedsRepeat) {
  torch::Tensor logits = torch::randn({4, 50});
  GenerateOptions greedy;
  at::Generator gen = at::detail::createCPUGenerator(1);
  EXPECT_TRUE(
      torch::equal(ChooseNextTokens(logits, greedy, &gen), logits.argmax(-1)));
  GenerateOptions k1;
  k1.temperature = 1.0;
  k1.top_k = 1;
  EXPECT_TRUE(
      torch::equal(ChooseNextTokens(logits, k1, &gen), logits.argmax(-1)));
  GenerateOptions p;
  p.temperature = 1.0;
  p.top_p = 1e-6;  // keeps only the best token
  EXPECT_TRUE(
      torch::equal(ChooseNextTokens(logits, p, &gen), logits.argmax(-1)));
  GenerateOptions s;
  s.temperature = 0.8;
  s.top_k = 20;
  s.top_p = 0.9;
  at::Generator a = at::detail::createCPUGenerator(7),
                b = at::detail::createCPUGenerator(7);
  for (int i = 0; i < 5; ++i) {
    torch::Tensor ta = ChooseNextTokens(logits, s, &a),
                  tb = ChooseNextTokens(logits, s, &b);
    EXPECT_TRUE(torch::equal(ta, tb));
    // Every sampled token is among the 20 best of its row.
    torch::Tensor top = std::get<1>(logits.topk(20, -1));
    EXPECT_TRUE(top.eq(ta.unsqueeze(1)).any(-1).all().item<bool>());
  }
}

TEST(GenerateTest, StopsOnStopTokenAndPads) {
  Gemma3Model model(TinyVl());
  ASSERT_TRUE(LoadParameters(*model, RandomWeights(model)).ok());
  ModelInputs prompt;
  prompt.input_ids = torch::tensor({{2, 7, 9, 11}});
  GenerateOptions opts;
  opts.max_new_tokens = 6;
  auto free_run = Generate(model, prompt, opts);
  ASSERT_TRUE(free_run.ok()) << free_run.status();
  ASSERT_EQ(free_run->tokens.size(1), 6);
  const int64_t first = free_run->tokens[0][0].item<int64_t>();
  opts.stop_token_ids = {first};
  auto stopped = Generate(model, prompt, opts);
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->tokens.size(1), 1);  // the only row stopped at once
  EXPECT_EQ(stopped->tokens[0][0].item<int64_t>(), first);
  prompt.position_ids = torch::tensor({{0, 1, 2, 3}});
  EXPECT_FALSE(Generate(model, prompt, opts).ok());
}

// The stop state is read every few steps, not each one: rows that stop at
// different steps still give exactly the tokens a per-step check gives
// (pads after each row's stop, nothing after the last), with the growing or
// the static cache, with or without a per-step callback.
TEST(GenerateTest, RowsStoppingAtDifferentStepsEndWhereTheLastStops) {
  torch::manual_seed(5);
  Gemma3Model model(TinyVl());
  ASSERT_TRUE(LoadParameters(*model, RandomWeights(model)).ok());
  ModelInputs prompt;
  prompt.input_ids = torch::tensor({{2, 7, 9, 11}, {0, 2, 5, 8}});
  prompt.attention_mask = torch::tensor({{1, 1, 1, 1}, {0, 1, 1, 1}});
  GenerateOptions opts;
  opts.max_new_tokens = 24;
  opts.pad_token_id = 63;
  opts.temperature = 2.0;  // sampled (seeded): varied tokens
  auto free_run = Generate(model, prompt, opts);
  ASSERT_TRUE(free_run.ok()) << free_run.status();
  const torch::Tensor& all = free_run->tokens;
  // Row 0 stops early; row 1 on a token it first makes after step 10 (past
  // the first read of the stop state).
  int64_t late = -1;
  for (int64_t s = 10; s < 24 && late < 0; ++s) {
    const torch::Tensor before = all[1].narrow(0, 0, s);
    if (!before.eq(all[1][s]).any().item<bool>()) late = s;
  }
  ASSERT_GE(late, 0) << "no fresh token after step 10: " << all;
  opts.stop_token_ids = {all[0][3].item<int64_t>(),
                         all[1][late].item<int64_t>()};
  // The expected result, step by step.
  std::vector<int64_t> stopped_at(2, -1);
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t s = 0; s < 24 && stopped_at[r] < 0; ++s) {
      for (int64_t id : opts.stop_token_ids)
        if (all[r][s].item<int64_t>() == id) stopped_at[r] = s;
    }
    ASSERT_GE(stopped_at[r], 0);
  }
  const int64_t n = std::max(stopped_at[0], stopped_at[1]) + 1;
  EXPECT_GT(n, 8);
  torch::Tensor want = all.narrow(1, 0, n).clone();
  for (int64_t r = 0; r < 2; ++r)
    want[r].narrow(0, stopped_at[r] + 1, n - stopped_at[r] - 1).fill_(63);
  for (bool static_cache : {false, true}) {
    for (bool callback : {false, true}) {
      GenerateOptions o = opts;
      o.static_cache = static_cache;
      int64_t calls = 0;
      if (callback) o.on_step = [&](int64_t, const torch::Tensor&) { ++calls; };
      auto got = Generate(model, prompt, o);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_TRUE(torch::equal(got->tokens, want))
          << "static " << static_cache << " callback " << callback << "\n"
          << got->tokens << "\n"
          << want;
      EXPECT_EQ(got->step_logits.size(1), n);
      if (callback) EXPECT_EQ(calls, n);
    }
  }
}

}  // namespace
}  // namespace gemma
