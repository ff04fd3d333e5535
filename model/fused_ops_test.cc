// The fused CUDA kernels (model/fused_ops.h) against the ATen formulation
// they replace, values and gradients, in fp32 and bf16, on strided inputs and
// row sizes that are not multiples of the warp. The model-level check against
// transformers is the GPU parity suite (tests/parity/), which runs with the
// kernels on. Needs a GPU; on the CPU only the dispatch is checked.
#include "model/fused_ops.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <tuple>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/cuda_kernel_test.h"
#include "model/gemma3.h"
#include "model/layers.h"

namespace gemma {
namespace {


// A fresh leaf of t's values in `dtype` (never an alias of t: .to() returns
// t itself when the dtype already matches).
torch::Tensor Leaf(const torch::Tensor& t, c10::ScalarType dtype) {
  return t.to(dtype).detach().clone().requires_grad_(true);
}

// bf16 results against the fp32 math on the same (rounded) inputs.
double Tol(c10::ScalarType t) { return t == torch::kFloat ? 2e-6 : 1e-2; }

// The ATen reference: Gemma's norm as transformers writes it.
torch::Tensor RefNorm(const torch::Tensor& x, const torch::Tensor& w,
                      double eps) {
  return GemmaRmsNorm(x, w, eps, /*fused=*/false);
}

torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

TEST(FusedOpsTest, CpuTensorsTakeTheAtenPath) {
  EXPECT_FALSE(FusedApplies(torch::zeros({2, 8})));
  EXPECT_FALSE(FusedApplies(torch::Tensor()));
  if (!FusedKernelsBuilt()) {
    EXPECT_THROW(FusedGeluMul(torch::zeros({2, 8})), c10::Error);
  }
}

using FusedCudaTest = CudaKernelTest<5>;

// Row sizes for both paths: 77 the generic kernels, the others the 16-byte
// vectorized ones (one, two and four vectors a thread for 9000).
TEST_F(FusedCudaTest, RmsNormValuesAndGradients) {
  for (int64_t n : {int64_t{77}, int64_t{64}, int64_t{1000}, int64_t{2560},
                    int64_t{9000}}) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      for (auto wdtype : {torch::kFloat, torch::kBFloat16}) {
        auto opts = torch::TensorOptions(kCuda);
        torch::Tensor x0 = torch::randn({3, 7, n}, opts).to(dtype);
        torch::Tensor w0 = (torch::randn({n}, opts) * 0.3).to(wdtype);
        torch::Tensor gy = torch::randn({3, 7, n}, opts).to(dtype);
        // Reference in fp32 on the same values.
        torch::Tensor xr = Leaf(x0, torch::kFloat);
        torch::Tensor wr = Leaf(w0, torch::kFloat);
        torch::Tensor yr = RefNorm(xr, wr, 1e-6);
        (yr * gy.to(torch::kFloat)).sum().backward();

        torch::Tensor x = Leaf(x0, dtype);
        torch::Tensor w = Leaf(w0, wdtype);
        torch::Tensor y = FusedRmsNorm(x, w, 1e-6, 1.0);
        (y * gy).sum().backward();
        ASSERT_EQ(y.scalar_type(), dtype);
        ASSERT_EQ(w.grad().scalar_type(), wdtype);
        const std::string at = "n " + std::to_string(n) + " dtype " +
                               c10::toString(dtype) + " w " +
                               c10::toString(wdtype);
        EXPECT_LT(Rel(y, yr), Tol(dtype)) << at;
        EXPECT_LT(Rel(x.grad(), xr.grad()), Tol(dtype)) << at;
        EXPECT_LT(Rel(w.grad(), wr.grad()), Tol(dtype) + Tol(wdtype)) << at;
      }
    }
  }
}

// Gemma 4's norms: scale w (offset 0), and no weight at all (v_norm, the
// router's), values and gradients.
TEST_F(FusedCudaTest, RmsNormWithoutOffsetOrWeight) {
  auto opts = torch::TensorOptions(kCuda);
  for (bool with_weight : {true, false}) {
    torch::Tensor x0 = torch::randn({4, 6, 512}, opts).to(torch::kBFloat16);
    torch::Tensor w0 = torch::randn({512}, opts).to(torch::kBFloat16);
    torch::Tensor gy = torch::randn({4, 6, 512}, opts).to(torch::kBFloat16);
    torch::Tensor xr = Leaf(x0, torch::kFloat), wr = Leaf(w0, torch::kFloat);
    torch::Tensor yr = xr * torch::rsqrt(xr.pow(2).mean(-1, true) + 1e-6);
    if (with_weight) yr = yr * wr;
    (yr * gy.to(torch::kFloat)).sum().backward();
    torch::Tensor x = Leaf(x0, torch::kBFloat16),
                  w = Leaf(w0, torch::kBFloat16);
    torch::Tensor y = FusedRmsNorm(x, with_weight ? w : torch::Tensor(), 1e-6,
                                   /*offset=*/0.0);
    (y * gy).sum().backward();
    EXPECT_LT(Rel(y, yr), 1e-2) << with_weight;
    EXPECT_LT(Rel(x.grad(), xr.grad()), 1e-2) << with_weight;
    if (with_weight) {
      EXPECT_LT(Rel(w.grad(), wr.grad()), 2e-2);
    } else {
      EXPECT_FALSE(w.grad().defined());
    }
  }
}

// q of a fused qkv projection: [B, L, nkv, g, hd] narrowed from
// [B, L, nkv, g + 2, hd] (strided), cos/sin for one row or per row.
TEST_F(FusedCudaTest, NormRopeOnStridedHeadsValuesAndGradients) {
  const int64_t b = 2, l = 5, nkv = 2, g = 3;
  // 12: the generic kernels; 16-512: the vectorized ones (512 in fp32 with
  // two vectors of each half a lane).
  for (int64_t hd :
       {int64_t{12}, int64_t{16}, int64_t{128}, int64_t{256}, int64_t{512}}) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      for (int64_t cos_rows : {int64_t{1}, b}) {
        for (int mode = 0; mode < 3; ++mode) {  // norm+rope, rope, norm
          const bool norm = mode != 1, rope = mode != 2;
          auto opts = torch::TensorOptions(kCuda);
          torch::Tensor fused =
              torch::randn({b, l, nkv, g + 2, hd}, opts).to(dtype);
          torch::Tensor w0 = (torch::randn({hd}, opts) * 0.3).to(dtype);
          torch::Tensor ang = torch::randn({cos_rows, l, hd / 2}, opts);
          ang = torch::cat({ang, ang}, -1);
          torch::Tensor cos = rope ? ang.cos().to(dtype) : torch::Tensor();
          torch::Tensor sin = rope ? ang.sin().to(dtype) : torch::Tensor();
          torch::Tensor gy = torch::randn({b, l, nkv, g, hd}, opts).to(dtype);

          torch::Tensor fr = Leaf(fused, torch::kFloat);
          torch::Tensor wr = Leaf(w0, torch::kFloat);
          torch::Tensor q = fr.narrow(3, 0, g);
          torch::Tensor yr = norm ? RefNorm(q, wr, 1e-6) : q;
          if (rope) {
            torch::Tensor c =
                cos.to(torch::kFloat).view({cos_rows, l, 1, 1, hd});
            torch::Tensor s =
                sin.to(torch::kFloat).view({cos_rows, l, 1, 1, hd});
            yr = yr * c + RotateHalf(yr) * s;
          }
          (yr * gy.to(torch::kFloat)).sum().backward();

          torch::Tensor f = Leaf(fused, dtype);
          torch::Tensor w = Leaf(w0, dtype);
          torch::Tensor y =
              FusedNormRope(f.narrow(3, 0, g), norm, w, 1e-6, 1.0, cos, sin);
          ASSERT_TRUE(y.is_contiguous());
          ASSERT_EQ(y.sizes(), yr.sizes());
          (y * gy).sum().backward();
          const std::string at = "hd " + std::to_string(hd) + " " +
                                 c10::toString(dtype) + " cos rows " +
                                 std::to_string(cos_rows) + " mode " +
                                 std::to_string(mode);
          EXPECT_LT(Rel(y, yr), Tol(dtype)) << at;
          EXPECT_LT(Rel(f.grad(), fr.grad()), Tol(dtype)) << at;
          // Nothing flows into k and v's rows.
          EXPECT_EQ(f.grad().narrow(3, g, 2).abs().max().item<float>(), 0.f)
              << at;
          if (norm) {
            EXPECT_LT(Rel(w.grad(), wr.grad()), 2 * Tol(dtype)) << at;
          } else {
            EXPECT_FALSE(w.grad().defined()) << at;
          }
        }
      }
    }
  }
}

// The training path's qkv split: q and k normed and roped, v copied, and one
// d(qkv) buffer in backward, against the ATen composition.
TEST_F(FusedCudaTest, QkvNormRopeValuesAndGradients) {
  const int64_t b = 2, l = 7, nkv = 2, g = 2, hd = 64;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    auto opts = torch::TensorOptions(kCuda);
    torch::Tensor y0 = torch::randn({b, l, nkv, g + 2, hd}, opts).to(dtype);
    torch::Tensor qw0 = (torch::randn({hd}, opts) * 0.3).to(dtype);
    torch::Tensor kw0 = (torch::randn({hd}, opts) * 0.3).to(dtype);
    torch::Tensor ang = torch::randn({b, l, hd / 2}, opts);
    ang = torch::cat({ang, ang}, -1);
    torch::Tensor cos = ang.cos().to(dtype), sin = ang.sin().to(dtype);
    std::vector<torch::Tensor> gys = {
        torch::randn({b, l, nkv, g, hd}, opts).to(dtype),
        torch::randn({b, l, nkv, hd}, opts).to(dtype),
        torch::randn({b, l, nkv, hd}, opts).to(dtype)};

    torch::Tensor yr = Leaf(y0, torch::kFloat);
    torch::Tensor qwr = Leaf(qw0, torch::kFloat),
                  kwr = Leaf(kw0, torch::kFloat);
    torch::Tensor c = cos.to(torch::kFloat).unsqueeze(2);
    torch::Tensor s = sin.to(torch::kFloat).unsqueeze(2);
    torch::Tensor qr = RefNorm(yr.narrow(3, 0, g), qwr, 1e-6);
    qr = qr * c.unsqueeze(3) + RotateHalf(qr) * s.unsqueeze(3);
    torch::Tensor kr = RefNorm(yr.select(3, g), kwr, 1e-6);
    kr = kr * c + RotateHalf(kr) * s;
    torch::Tensor vr = yr.select(3, g + 1);
    ((qr * gys[0].to(torch::kFloat)).sum() +
     (kr * gys[1].to(torch::kFloat)).sum() +
     (vr * gys[2].to(torch::kFloat)).sum())
        .backward();

    torch::Tensor y = Leaf(y0, dtype);
    torch::Tensor qw = Leaf(qw0, dtype), kw = Leaf(kw0, dtype);
    std::vector<torch::Tensor> out =
        FusedQkvNormRope(y, g, qw, kw, 1e-6, 1.0, cos, sin);
    ASSERT_EQ(out.size(), 3u);
    ((out[0] * gys[0]).sum() + (out[1] * gys[1]).sum() +
     (out[2] * gys[2]).sum())
        .backward();
    const std::string at = c10::toString(dtype);
    EXPECT_LT(Rel(out[0], qr), Tol(dtype)) << at;
    EXPECT_LT(Rel(out[1], kr), Tol(dtype)) << at;
    EXPECT_TRUE(torch::equal(out[2], y0.select(3, g + 1))) << at;
    {
      // The inference entry: the same q and k, bit for bit.
      torch::NoGradGuard no_grad;
      auto [q2, k2] = FusedQkNormRope(y0, g, qw0, kw0, 1e-6, 1.0, cos, sin);
      EXPECT_TRUE(torch::equal(q2, out[0].detach())) << at;
      EXPECT_TRUE(torch::equal(k2, out[1].detach())) << at;
    }
    EXPECT_LT(Rel(y.grad(), yr.grad()), Tol(dtype)) << at;
    EXPECT_LT(Rel(qw.grad(), qwr.grad()), 2 * Tol(dtype)) << at;
    EXPECT_LT(Rel(kw.grad(), kwr.grad()), 2 * Tol(dtype)) << at;
    // Only q used: k's and v's rows of d(qkv) are zero, not garbage.
    y.mutable_grad() = torch::Tensor();
    out = FusedQkvNormRope(y, g, qw, kw, 1e-6, 1.0, cos, sin);
    out[0].sum().backward();
    EXPECT_EQ(y.grad().narrow(3, g, 2).abs().max().item<float>(), 0.f) << at;
  }
}

TEST_F(FusedCudaTest, GeluMulValuesAndGradients) {
  // 333 columns: the generic kernels; 512: the vectorized ones; 70000 rows:
  // more than one grid row a block.
  const std::pair<int64_t, int64_t> shapes[] = {
      {27, 333}, {27, 512}, {70000, 16}};
  for (const auto& [rows, inter] : shapes) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      auto opts = torch::TensorOptions(kCuda);
      torch::Tensor gu0 = (torch::randn({rows, 2 * inter}, opts) * 2).to(dtype);
      torch::Tensor gy = torch::randn({rows, inter}, opts).to(dtype);
      torch::Tensor gr = Leaf(gu0, torch::kFloat);
      std::vector<torch::Tensor> parts = gr.chunk(2, -1);
      torch::Tensor yr = torch::gelu(parts[0], "tanh") * parts[1];
      (yr * gy.to(torch::kFloat)).sum().backward();
      torch::Tensor gu = Leaf(gu0, dtype);
      torch::Tensor y = FusedGeluMul(gu);
      (y * gy).sum().backward();
      const std::string at = std::to_string(rows) + " x " +
                             std::to_string(inter) + " " + c10::toString(dtype);
      EXPECT_LT(Rel(y, yr), Tol(dtype)) << at;
      EXPECT_LT(Rel(gu.grad(), gr.grad()), Tol(dtype)) << at;
    }
  }
}

TEST_F(FusedCudaTest, ResidualNormMatchesAddThenNorms) {
  torch::NoGradGuard no_grad;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    auto opts = torch::TensorOptions(kCuda);
    const int64_t n = 2560;
    torch::Tensor res = torch::randn({2, 3, n}, opts).to(dtype);
    torch::Tensor x = torch::randn({2, 3, n}, opts).to(dtype);
    torch::Tensor w1 = (torch::randn({n}, opts) * 0.3).to(dtype);
    torch::Tensor w2 = (torch::randn({n}, opts) * 0.3).to(dtype);
    torch::Tensor h_ref = res + RefNorm(x, w1, 1e-6);  // rounded as stored
    torch::Tensor y_ref = RefNorm(h_ref, w2, 1e-6);
    auto [h, y] = FusedResidualNorm(res, x, w1, w2, 1e-6, 1.0);
    EXPECT_LT(Rel(h, h_ref), Tol(dtype)) << c10::toString(dtype);
    EXPECT_LT(Rel(y, y_ref), Tol(dtype)) << c10::toString(dtype);
    auto [h1, none] = FusedResidualNorm(res, x, w1, torch::Tensor(), 1e-6, 1.0);
    EXPECT_TRUE(torch::equal(h1, h));
    EXPECT_FALSE(none.defined());
  }
}

// More rows than the backward kernels' grids hold at once (each block loops
// over rows and sums its weight gradient before the final reduction):
// values and gradients against fp32 on the same inputs.
TEST_F(FusedCudaTest, BackwardOverManyRowsPerBlock) {
  auto opts = torch::TensorOptions(kCuda);
  const auto bf = torch::kBFloat16;
  {
    torch::Tensor x0 = torch::randn({64, 40, 2560}, opts).to(bf);
    torch::Tensor w0 = (torch::randn({2560}, opts) * 0.3).to(bf);
    torch::Tensor gy = torch::randn({64, 40, 2560}, opts).to(bf);
    torch::Tensor xr = Leaf(x0, torch::kFloat), wr = Leaf(w0, torch::kFloat);
    (RefNorm(xr, wr, 1e-6) * gy.to(torch::kFloat)).sum().backward();
    torch::Tensor x = Leaf(x0, bf), w = Leaf(w0, bf);
    (FusedRmsNorm(x, w, 1e-6, 1.0) * gy).sum().backward();
    EXPECT_LT(Rel(x.grad(), xr.grad()), 1e-2);
    EXPECT_LT(Rel(w.grad(), wr.grad()), 2e-2);
  }
  {
    const int64_t b = 4, l = 1100, nkv = 2, g = 2, hd = 256;
    torch::Tensor fused = torch::randn({b, l, nkv, g + 2, hd}, opts).to(bf);
    torch::Tensor w0 = (torch::randn({hd}, opts) * 0.3).to(bf);
    torch::Tensor ang = torch::randn({1, l, hd / 2}, opts);
    ang = torch::cat({ang, ang}, -1);
    torch::Tensor cos = ang.cos().to(bf), sin = ang.sin().to(bf);
    torch::Tensor gy = torch::randn({b, l, nkv, g, hd}, opts).to(bf);
    torch::Tensor fr = Leaf(fused, torch::kFloat), wr = Leaf(w0, torch::kFloat);
    torch::Tensor yr = RefNorm(fr.narrow(3, 0, g), wr, 1e-6);
    torch::Tensor c = cos.to(torch::kFloat).view({1, l, 1, 1, hd});
    torch::Tensor s = sin.to(torch::kFloat).view({1, l, 1, 1, hd});
    yr = yr * c + RotateHalf(yr) * s;
    (yr * gy.to(torch::kFloat)).sum().backward();
    torch::Tensor f = Leaf(fused, bf), w = Leaf(w0, bf);
    torch::Tensor y =
        FusedNormRope(f.narrow(3, 0, g), true, w, 1e-6, 1.0, cos, sin);
    (y * gy).sum().backward();
    EXPECT_LT(Rel(y, yr), 1e-2);
    EXPECT_LT(Rel(f.grad(), fr.grad()), 1e-2);
    EXPECT_LT(Rel(w.grad(), wr.grad()), 2e-2);
  }
}

// A whole bf16 decoder layer, training (forward + backward) and inference,
// with the kernels on and off: the same outputs and gradients within bf16.
TEST_F(FusedCudaTest, DecoderLayerWithAndWithoutKernels) {
  TextConfig c;
  c.hidden_size = 256, c.intermediate_size = 512;
  c.num_heads = 4, c.num_kv_heads = 2, c.head_dim = 64;
  c.query_pre_attn_scalar = 64;
  c.num_layers = 1;
  c.layer_types = {LayerType::kFull};
  Gemma3DecoderLayer layer(c, LayerType::kFull, TpOptions{});
  {
    torch::NoGradGuard g;
    for (auto& p : layer->parameters()) p.copy_(torch::randn(p.sizes()) * 0.2);
  }
  layer->to(kCuda, torch::kBFloat16);
  const int64_t b = 2, l = 33;
  torch::Tensor x0 =
      torch::randn({b, l, c.hidden_size},
                   torch::TensorOptions(kCuda).dtype(torch::kBFloat16));
  torch::Tensor pos =
      torch::arange(l, torch::TensorOptions(kCuda).dtype(torch::kLong))
          .unsqueeze(0);
  auto [cos, sin] = RopeCosSin(RopeInverseFrequencies(c.head_dim, c.rope_full),
                               pos, torch::kBFloat16);
  MaskSpec spec;
  spec.batch = b, spec.q_len = l, spec.kv_len = l, spec.device = kCuda;
  torch::Tensor bias = BuildAttentionBias(spec, torch::kBFloat16);
  torch::Tensor gy = torch::randn_like(x0);

  auto run = [&](bool fused) {
    SetFusedKernels(fused);
    layer->zero_grad();
    torch::Tensor x = x0.clone().requires_grad_(true);
    torch::Tensor y = layer->forward(x, cos, sin, bias);
    (y.to(torch::kFloat) * gy.to(torch::kFloat)).sum().backward();
    torch::Tensor inference;
    {
      torch::NoGradGuard g;
      inference = layer->forward(x0, cos, sin, bias);
    }
    std::vector<torch::Tensor> grads{x.grad().clone()};
    for (auto& p : layer->parameters()) grads.push_back(p.grad().clone());
    return std::make_tuple(y.detach(), inference, grads);
  };
  auto [y_off, inf_off, g_off] = run(false);
  auto [y_on, inf_on, g_on] = run(true);
  SetFusedKernels(true);
  EXPECT_LT(Rel(y_on, y_off), 1e-2);
  EXPECT_LT(Rel(inf_on, inf_off), 1e-2);
  EXPECT_LT(Rel(inf_on, y_on), 1e-2);
  ASSERT_EQ(g_on.size(), g_off.size());
  for (size_t i = 0; i < g_on.size(); ++i)
    EXPECT_LT(Rel(g_on[i], g_off[i]), 2e-2) << "gradient " << i;
}

}  // namespace
}  // namespace gemma
