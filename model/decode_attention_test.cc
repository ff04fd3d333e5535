// The split-K decode-attention kernel (model/decode_attention.h) against the
// ATen decode step it replaces (cache write + StaticStepBias + softmax
// attention in fp32), over head dims, group sizes, windows, step indices and
// left-padding holes, with the slots it must not read poisoned with NaN; and
// the static decoder with the kernel on and off (CUDA graph included). Needs
// a GPU; on the CPU only the dispatch is checked.
#include "model/decode_attention.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "model/cuda_kernel_test.h"
#include "model/fused_ops.h"
#include "model/layers.h"
#include "model/static_decoder.h"
#include "model/vl_model.h"

namespace gemma {
namespace {


// One step's operands. q, k_new, v_new are strided views of one buffer
// [B, nkv, g + 2, hd] (as the fused qkv projection lays them out).
struct Step {
  DecodeAttentionInputs in;
  torch::Tensor k_before, v_before;  // the caches before the step
};

Step MakeStep(int64_t b, int64_t nkv, int64_t g, int64_t hd, int64_t c,
              int64_t index, int64_t window, c10::ScalarType dtype,
              const torch::Device& device) {
  auto opts = torch::TensorOptions(device).dtype(dtype);
  Step s;
  torch::Tensor qkv = torch::randn({b, nkv, g + 2, hd}, opts);
  s.in.q = qkv.narrow(2, 0, g);
  s.in.k_new = qkv.narrow(2, g, 1);
  s.in.v_new = qkv.narrow(2, g + 1, 1);
  s.in.k_cache = torch::randn({b, nkv, c, hd}, opts);
  s.in.v_cache = torch::randn({b, nkv, c, hd}, opts);
  // Row 0 all real; row 1 left-padded by 3 with a hole at slot c / 2.
  torch::Tensor padding =
      torch::ones({b, c}, torch::TensorOptions(device).dtype(torch::kLong));
  if (b > 1) {
    padding[1].narrow(0, 0, std::min<int64_t>(3, c)).zero_();
    padding[1][c / 2] = 0;
  }
  padding.narrow(1, index, 1).fill_(1);  // the new token's slot is real
  s.in.padding = padding;
  s.in.index =
      torch::full({1}, index, torch::TensorOptions(device).dtype(torch::kLong));
  s.in.window = window;
  s.in.scale = 1.0 / std::sqrt(static_cast<double>(hd));
  s.k_before = s.in.k_cache.clone();
  s.v_before = s.in.v_cache.clone();
  return s;
}

// The ATen step in fp32: the new keys at `index`, scores + StaticStepBias,
// softmax, @ v. Returns [B, nkv, g, hd].
torch::Tensor Reference(const Step& s) {
  const int64_t index = s.in.index.item<int64_t>();
  torch::Tensor k = s.k_before.to(torch::kFloat).clone();
  torch::Tensor v = s.v_before.to(torch::kFloat).clone();
  k.narrow(2, index, 1).copy_(s.in.k_new);
  v.narrow(2, index, 1).copy_(s.in.v_new);
  torch::Tensor q = s.in.q.to(torch::kFloat);
  torch::Tensor bias =
      StaticStepBias(s.in.index, s.in.padding, s.in.window, torch::kFloat);
  torch::Tensor scores = torch::matmul(q, k.transpose(2, 3)) * s.in.scale +
                         bias;  // [B, nkv, g, C]
  return torch::matmul(torch::softmax(scores, -1), v);
}

// NaN in every cache slot the step must not read: past index, before the
// window, padding holes, and slot index itself (the kernel takes k_new there).
void PoisonUnreadSlots(Step& s) {
  const int64_t c = s.in.k_cache.size(2);
  torch::Tensor j = torch::arange(
      c, torch::TensorOptions(s.in.padding.device()).dtype(torch::kLong));
  torch::Tensor read = j.lt(s.in.index).logical_and(s.in.padding.ne(0));
  if (s.in.window > 0) read = read.logical_and(j.gt(s.in.index - s.in.window));
  read = read.view({read.size(0), 1, c, 1});  // [B, 1, C, 1]
  const double nan = std::numeric_limits<double>::quiet_NaN();
  s.in.k_cache.copy_(torch::where(read, s.in.k_cache, nan));
  s.in.v_cache.copy_(torch::where(read, s.in.v_cache, nan));
  s.k_before = s.in.k_cache.clone();
  s.v_before = s.in.v_cache.clone();
}

TEST(DecodeAttentionDispatchTest, CpuTensorsAreNotApplicable) {
  Step s = MakeStep(2, 2, 2, 128, 20, 7, 0, torch::kFloat, torch::kCPU);
  EXPECT_FALSE(FusedDecodeAttentionServes(s.in.q, 128));
  EXPECT_FALSE(FusedDecodeAttentionApplies(s.in));
  EXPECT_FALSE(FusedDecodeAttentionApplies(DecodeAttentionInputs{}));
  if (!FusedKernelsBuilt()) {
    EXPECT_THROW(FusedDecodeAttention(s.in), c10::Error);
  }
}

using DecodeAttentionCudaTest = CudaKernelTest<7>;

TEST_F(DecodeAttentionCudaTest, MatchesTheAtenStepAndWritesOnlyItsSlot) {
  struct Shape {
    int64_t hd, g;
  };
  const std::vector<Shape> shapes = {{64, 8},  {128, 1}, {128, 2}, {128, 4},
                                     {256, 1}, {256, 2}, {256, 4}, {512, 1},
                                     {512, 2}, {512, 4}, {512, 8}};
  // C = 300 splits unevenly; C = 13 runs one split (no combine kernel).
  for (int64_t c : {int64_t{300}, int64_t{13}}) {
    for (const Shape& shape : shapes) {
      for (int64_t index : {int64_t{0}, c / 2 + 1, c - 1}) {
        for (int64_t window : {int64_t{0}, int64_t{5}, int64_t{100}}) {
          for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
            const std::string where =
                "C " + std::to_string(c) + " hd " + std::to_string(shape.hd) +
                " g " + std::to_string(shape.g) + " index " +
                std::to_string(index) + " window " + std::to_string(window) +
                (dtype == torch::kFloat ? " fp32" : " bf16");
            Step s = MakeStep(2, 2, shape.g, shape.hd, c, index, window, dtype,
                              kCuda);
            torch::Tensor ref = Reference(s);  // before the poison
            PoisonUnreadSlots(s);
            ASSERT_TRUE(FusedDecodeAttentionApplies(s.in)) << where;
            torch::Tensor out = FusedDecodeAttention(s.in);
            ASSERT_EQ(out.sizes(), s.in.q.sizes()) << where;
            EXPECT_EQ(out.scalar_type(), dtype) << where;
            EXPECT_TRUE(out.isfinite().all().item<bool>()) << where;
            EXPECT_LT(Rel(out, ref), dtype == torch::kFloat ? 1e-5 : 1e-2)
                << where;
            // Slot index holds the new keys and values; nothing else moved
            // (equal_nan: the poison stays where it was).
            torch::Tensor k_want = s.k_before.clone();
            torch::Tensor v_want = s.v_before.clone();
            k_want.narrow(2, index, 1).copy_(s.in.k_new);
            v_want.narrow(2, index, 1).copy_(s.in.v_new);
            EXPECT_TRUE(torch::allclose(s.in.k_cache, k_want, 0, 0, true))
                << where;
            EXPECT_TRUE(torch::allclose(s.in.v_cache, v_want, 0, 0, true))
                << where;
          }
        }
      }
    }
  }
}

// Gemma 3's q/k norm (weight 1 + w) and rotary embedding in ATen fp32,
// rounded to x's dtype: x [B, nkv, rows, hd], cos/sin [B or 1, 1, hd].
torch::Tensor NormRopeReference(const torch::Tensor& x, const torch::Tensor& w,
                                const torch::Tensor& cos,
                                const torch::Tensor& sin, double eps) {
  const int64_t hd = x.size(-1);
  torch::Tensor f = x.to(torch::kFloat);
  f = f * torch::rsqrt(f.pow(2).mean(-1, true) + eps) *
      (1.0 + w.to(torch::kFloat));
  torch::Tensor rotated =
      torch::cat({-f.narrow(-1, hd / 2, hd / 2), f.narrow(-1, 0, hd / 2)}, -1);
  const auto c = cos.to(torch::kFloat).unsqueeze(1);  // [B or 1, 1, 1, hd]
  const auto s = sin.to(torch::kFloat).unsqueeze(1);
  return (f * c + rotated * s).to(x.scalar_type());
}

TEST_F(DecodeAttentionCudaTest, FoldedNormRopeMatchesTheAtenNormRopeThenStep) {
  const double eps = 1e-6;
  for (int64_t hd : {64, 128, 256, 512}) {
    for (int64_t g : {1, 2}) {
      for (int64_t cos_rows : {1, 2}) {
        for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
          const int64_t c = 300, index = 170;
          const std::string where =
              "hd " + std::to_string(hd) + " g " + std::to_string(g) +
              " cos rows " + std::to_string(cos_rows) +
              (dtype == torch::kFloat ? " fp32" : " bf16");
          Step s = MakeStep(2, 2, g, hd, c, index, 100, dtype, kCuda);
          auto opts = torch::TensorOptions(kCuda).dtype(dtype);
          // Raw projection rows with a large spread, as before a norm.
          s.in.q.mul_(3.0);
          s.in.k_new.mul_(3.0);
          const torch::Tensor qw = torch::randn({hd}, opts) * 0.3;
          const torch::Tensor kw = torch::randn({hd}, opts) * 0.3;
          torch::Tensor angle =
              torch::rand({cos_rows, 1, hd / 2}, opts.dtype(torch::kFloat)) *
              40.0;
          angle = torch::cat({angle, angle}, -1);
          const torch::Tensor cos = angle.cos().to(dtype);
          const torch::Tensor sin = angle.sin().to(dtype);
          // The reference: norm + rope in ATen, then the ATen step.
          Step r = s;
          r.in.q = NormRopeReference(s.in.q, qw, cos, sin, eps);
          r.in.k_new = NormRopeReference(s.in.k_new, kw, cos, sin, eps);
          const torch::Tensor ref = Reference(r);
          PoisonUnreadSlots(s);
          s.in.q_norm_weight = qw;
          s.in.k_norm_weight = kw;
          s.in.cos = cos;
          s.in.sin = sin;
          s.in.norm_eps = eps;
          ASSERT_TRUE(FusedDecodeAttentionApplies(s.in)) << where;
          const torch::Tensor out = FusedDecodeAttention(s.in);
          const double tol = dtype == torch::kFloat ? 1e-5 : 2e-2;
          EXPECT_LT(Rel(out, ref), tol) << where;
          // The cache holds the normed, rotated key (one rounding apart at
          // most) and the raw value; no other slot moved.
          EXPECT_LT(Rel(s.in.k_cache.narrow(2, index, 1), r.in.k_new), tol)
              << where;
          EXPECT_TRUE(torch::equal(s.in.v_cache.narrow(2, index, 1),
                                   s.in.v_new))
              << where;
          for (const auto& [now, before] :
               {std::pair{s.in.k_cache, s.k_before},
                std::pair{s.in.v_cache, s.v_before}}) {
            torch::Tensor a = now.clone(), b = before.clone();
            a.narrow(2, index, 1).zero_();
            b.narrow(2, index, 1).zero_();
            EXPECT_TRUE(torch::allclose(a, b, 0, 0, true)) << where;
          }
        }
      }
    }
  }
  // What it rejects: a weight of the wrong size; cos/sin of two rows for a
  // batch of one.
  Step s = MakeStep(1, 2, 2, 128, 40, 10, 0, torch::kBFloat16, kCuda);
  auto opts = torch::TensorOptions(kCuda).dtype(torch::kBFloat16);
  s.in.q_norm_weight = torch::zeros({128}, opts);
  s.in.k_norm_weight = torch::zeros({64}, opts);
  s.in.cos = torch::ones({1, 1, 128}, opts);
  s.in.sin = torch::zeros({1, 1, 128}, opts);
  EXPECT_FALSE(FusedDecodeAttentionApplies(s.in));
  s.in.k_norm_weight = torch::zeros({128}, opts);
  EXPECT_TRUE(FusedDecodeAttentionApplies(s.in));
  s.in.cos = torch::ones({2, 1, 128}, opts);
  s.in.sin = torch::zeros({2, 1, 128}, opts);
  EXPECT_FALSE(FusedDecodeAttentionApplies(s.in));
}

TEST_F(DecodeAttentionCudaTest, HalfAndBatchOfOne) {
  for (int64_t index : {int64_t{0}, int64_t{700}, int64_t{1023}}) {
    Step s = MakeStep(1, 4, 2, 256, 1024, index, 512, torch::kHalf, kCuda);
    torch::Tensor ref = Reference(s);
    EXPECT_LT(Rel(FusedDecodeAttention(s.in), ref), 1e-2) << index;
  }
}

TEST_F(DecodeAttentionCudaTest, RejectsWhatItDoesNotServe) {
  Step s = MakeStep(2, 2, 2, 96, 20, 3, 0, torch::kFloat, kCuda);
  EXPECT_FALSE(FusedDecodeAttentionApplies(s.in));  // head_dim 96
  EXPECT_FALSE(FusedDecodeAttentionServes(s.in.q, 96));
  EXPECT_THROW(FusedDecodeAttention(s.in), c10::Error);
  Step t = MakeStep(2, 2, 2, 128, 20, 3, 0, torch::kFloat, kCuda);
  t.in.v_cache = t.in.v_cache.to(torch::kBFloat16);  // mixed dtypes
  EXPECT_FALSE(FusedDecodeAttentionApplies(t.in));
  Step u = MakeStep(2, 2, 2, 128, 20, 3, 0, torch::kFloat, kCuda);
  u.in.k_cache = u.in.k_cache.transpose(2, 3).contiguous().transpose(2, 3);
  EXPECT_FALSE(FusedDecodeAttentionApplies(u.in));  // not contiguous
  SetFusedKernels(false);
  EXPECT_FALSE(FusedDecodeAttentionApplies(t.in));
  SetFusedKernels(true);
}

// Two sliding layers (window 4) around a full one, GQA 4:2, head_dim 64.
ModelConfig SmallText() {
  ModelConfig c;
  c.model_type = "gemma3_text";
  TextConfig& t = c.text;
  t.vocab_size = 96, t.hidden_size = 64, t.intermediate_size = 96;
  t.num_layers = 3;
  t.num_heads = 4, t.num_kv_heads = 2, t.head_dim = 64;
  t.query_pre_attn_scalar = 64;
  t.sliding_window = 4;
  t.layer_types = {LayerType::kSliding, LayerType::kFull, LayerType::kSliding};
  return c;
}

// Greedy tokens and the logits of each step from a static decoder, with the
// decode-attention kernel on or off, optionally replaying a CUDA graph.
std::vector<torch::Tensor> GreedyLogits(Gemma3Model& model, bool fused,
                                        bool graph, int64_t n) {
  SetFusedKernels(fused);
  torch::NoGradGuard g;
  ModelInputs in;
  in.input_ids = torch::tensor({{2, 7, 9, 11, 13}, {0, 0, 2, 5, 8}}).to(kCuda);
  in.attention_mask =
      torch::tensor({{1, 1, 1, 1, 1}, {0, 0, 1, 1, 1}}).to(kCuda);
  in.position_ids = torch::tensor({{0, 1, 2, 3, 4}, {0, 0, 0, 1, 2}}).to(kCuda);
  StaticDecoder decoder(model, 5 + n + StaticDecoder::kWarmupSteps);
  std::vector<torch::Tensor> out{decoder.Prefill(in).clone()};
  if (graph) EXPECT_TRUE(decoder.CaptureGraph());
  for (int64_t i = 1; i < n; ++i) {
    decoder.SetTokens(out.back().argmax(-1));
    out.push_back(decoder.Step().clone());
  }
  SetFusedKernels(true);
  return out;
}

TEST_F(DecodeAttentionCudaTest, StaticDecoderSameTokensWithAndWithoutKernel) {
  torch::manual_seed(3);
  Gemma3Model model(SmallText());
  {
    torch::NoGradGuard g;
    for (auto& p : model->parameters()) p.copy_(torch::randn(p.sizes()) * 0.3);
  }
  model->eval();
  model->to(kCuda);
  const int64_t n = 14;  // past the window (4) thrice
  std::vector<torch::Tensor> off = GreedyLogits(model, false, false, n);
  std::vector<torch::Tensor> on = GreedyLogits(model, true, false, n);
  std::vector<torch::Tensor> on_graph = GreedyLogits(model, true, true, n);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_TRUE(torch::equal(on[i].argmax(-1), off[i].argmax(-1)))
        << "step " << i;
    EXPECT_TRUE(torch::equal(on_graph[i].argmax(-1), off[i].argmax(-1)))
        << "step " << i;
    EXPECT_LT(Rel(on[i], off[i]), 1e-4) << "step " << i;
    EXPECT_LT(Rel(on_graph[i], on[i]), 1e-6) << "step " << i;
  }
}

}  // namespace
}  // namespace gemma
