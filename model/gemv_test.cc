// The few-row GEMV kernel (model/gemv.h) and its dispatch (model/fused_ops.h)
// against at::linear in fp32 on the same rounded inputs: 1-4 rows of x, bf16
// and fp16, with and without bias, odd N, K a multiple of 8 but not of 256,
// every compiled configuration and K split, strided and misaligned x, inside
// a CUDA graph, and wired into Projection and VocabParallelLogits. Needs a
// GPU; on the CPU only the dispatch is checked.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <tuple>
#include <vector>

#include "model/cuda_graph.h"
#include "model/cuda_kernel_test.h"
#include "model/fused_ops.h"
#include "model/layers.h"
#include "model/tensor_parallel.h"

#if defined(GEMMA_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>

#include "model/gemv.h"
#endif

namespace gemma {
namespace {

TEST(GemvTest, DispatchDeclinesCpuTensors) {
  torch::Tensor x = torch::randn({1, 64}).to(torch::kBFloat16);
  torch::Tensor w = torch::randn({16, 64}).to(torch::kBFloat16);
  torch::Tensor b = torch::randn({16}).to(torch::kBFloat16);
  EXPECT_FALSE(FusedGemvApplies(x, w));
  EXPECT_FALSE(FusedGemvApplies(x, w, b));
  EXPECT_FALSE(FusedGemvApplies(torch::Tensor(), w));
  EXPECT_FALSE(FusedGemvApplies(x, torch::Tensor()));
  EXPECT_THROW(FusedLinear(x, w, b), c10::Error);
  EXPECT_FALSE(GemvServesProjection(x, w, b));
  EXPECT_THROW(FusedGemvGeluMul(x, torch::randn({32, 64}).to(torch::kBFloat16)),
               c10::Error);
  // The caller's entry point falls back to at::linear.
  torch::Tensor xf = x.to(torch::kFloat), wf = w.to(torch::kFloat),
                bf = b.to(torch::kFloat);
  EXPECT_TRUE(torch::equal(LinearWithGemv(xf, wf, bf), at::linear(xf, wf, bf)));
  EXPECT_TRUE(torch::equal(LinearWithGemv(xf, wf), at::linear(xf, wf)));
}

#if defined(GEMMA_WITH_CUDA)

std::string Name(c10::ScalarType t) { return c10::toString(t); }

// Checks y (x's dtype) against the fp32 linear of the same rounded inputs:
// per element within the rounding of the output (half an ulp of bf16 or
// fp16) plus a margin for fp32 accumulation in another order.
void ExpectMatches(const torch::Tensor& y, const torch::Tensor& x,
                   const torch::Tensor& w, const torch::Tensor& b,
                   const std::string& at) {
  torch::NoGradGuard g;
  const torch::Tensor xf = x.to(torch::kFloat), wf = w.to(torch::kFloat);
  const torch::Tensor bf = b.defined() ? b.to(torch::kFloat) : b;
  const torch::Tensor ref = at::linear(xf, wf, bf);
  ASSERT_EQ(y.scalar_type(), x.scalar_type()) << at;
  ASSERT_EQ(y.sizes(), ref.sizes()) << at;
  const double rtol =
      x.scalar_type() == torch::kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
  torch::Tensor scale = at::linear(xf.abs(), wf.abs());
  if (b.defined()) scale = scale + bf.abs();
  const torch::Tensor bound = ref.abs() * rtol + scale * 2e-5 + 1e-30;
  const torch::Tensor err = (y.to(torch::kFloat) - ref).abs();
  const double worst = (err / bound).max().item<double>();
  EXPECT_LE(worst, 1.0) << at << ": worst error " << worst << " of the bound";
}

class GemvCudaTest : public CudaKernelTest<11> {
 protected:
  // Random x [rows, k], w [n, k] * 0.05, bias [n] in `dtype`.
  static torch::Tensor X(int64_t rows, int64_t k, c10::ScalarType dtype) {
    return torch::randn({rows, k}, torch::TensorOptions(kCuda)).to(dtype);
  }
  static torch::Tensor W(int64_t n, int64_t k, c10::ScalarType dtype) {
    return (torch::randn({n, k}, torch::TensorOptions(kCuda)) * 0.05).to(dtype);
  }
  static torch::Tensor B(int64_t n, c10::ScalarType dtype) {
    return torch::randn({n}, torch::TensorOptions(kCuda)).to(dtype);
  }
};

TEST_F(GemvCudaTest, MatchesFp32LinearOnManyShapes) {
  torch::NoGradGuard g;
  struct Shape {
    int64_t n, k;
  };
  // Odd N (not a multiple of the rows a block owns), K a multiple of 8 but
  // not of 256 (a partial last column of chunks), one chunk in all, long K
  // on few rows (split K), a Gemma-sized row.
  const std::vector<Shape> shapes = {{1, 8},      {3, 8},      {37, 72},
                                     {129, 264},  {257, 2056}, {64, 10240},
                                     {1001, 2560}};
  for (auto dtype : {torch::kBFloat16, torch::kHalf}) {
    for (const Shape& s : shapes) {
      const torch::Tensor w = W(s.n, s.k, dtype), b = B(s.n, dtype);
      for (int64_t rows = 1; rows <= 4; ++rows) {
        const torch::Tensor x = X(rows, s.k, dtype);
        for (bool with_bias : {false, true}) {
          const torch::Tensor bias = with_bias ? b : torch::Tensor();
          const std::string at = Name(dtype) + " n " + std::to_string(s.n) +
                                 " k " + std::to_string(s.k) + " rows " +
                                 std::to_string(rows) +
                                 (with_bias ? " bias" : "");
          ASSERT_TRUE(FusedGemvApplies(x, w, bias)) << at;
          ExpectMatches(FusedLinear(x, w, bias), x, w, bias, at);
        }
      }
    }
  }
}

TEST_F(GemvCudaTest, EveryCompiledConfigurationAndKSplit) {
  torch::NoGradGuard g;
  for (auto dtype : {torch::kBFloat16, torch::kHalf}) {
    // 67 rows: a partial last group for 2 and 4 rows a warp; 2056 / 8 = 257
    // chunks: 9 columns, the last with one chunk. 8: a single chunk, so
    // every split but the first is empty.
    for (int64_t k : {int64_t{2056}, int64_t{8}}) {
      const torch::Tensor w = W(67, k, dtype), b = B(67, dtype);
      for (int64_t rows : {int64_t{1}, int64_t{3}, int64_t{4}}) {
        const torch::Tensor x = X(rows, k, dtype);
        for (fused_cuda::GemvConfig c : fused_cuda::GemvCompiledConfigs()) {
          for (int split : {1, 2, 4}) {
            c.k_split = split;
            const std::string at = Name(dtype) + " k " + std::to_string(k) +
                                   " rows " + std::to_string(rows) + " rw " +
                                   std::to_string(c.rows_per_warp) + " u " +
                                   std::to_string(c.unroll) + " p " +
                                   std::to_string(c.stages) + " split " +
                                   std::to_string(split);
            ExpectMatches(fused_cuda::Gemv(x, w, b, c), x, w, b, at);
          }
        }
      }
    }
  }
  const torch::Tensor x = X(1, 64, torch::kBFloat16);
  const torch::Tensor w = W(8, 64, torch::kBFloat16);
  EXPECT_THROW(fused_cuda::Gemv(x, w, {}, fused_cuda::GemvConfig{3, 3, 3, 1}),
               c10::Error);
  EXPECT_THROW(fused_cuda::Gemv(x, w, {}, fused_cuda::GemvConfig{0, 0, 0, 3}),
               c10::Error);
}

TEST_F(GemvCudaTest, StridedBatchedAndMisalignedInputs) {
  torch::NoGradGuard g;
  const int64_t n = 300, k = 520;
  const torch::Tensor w = W(n, k, torch::kBFloat16);
  // Non-contiguous: the transpose of [k, 3].
  const torch::Tensor xt = X(k, 3, torch::kBFloat16).t();
  ASSERT_FALSE(xt.is_contiguous());
  ExpectMatches(FusedLinear(xt, w), xt, w, {}, "transposed x");
  // Leading dimensions [2, 2, k] -> [2, 2, n].
  const torch::Tensor x4 = X(4, k, torch::kBFloat16).view({2, 2, k});
  const torch::Tensor y4 = FusedLinear(x4, w);
  EXPECT_EQ(y4.sizes().vec(), (std::vector<int64_t>{2, 2, n}));
  ExpectMatches(y4, x4, w, {}, "batched x");
  // Contiguous but 2 bytes off a 16-byte boundary.
  const torch::Tensor xm = X(1, k + 1, torch::kBFloat16).narrow(1, 1, k);
  ASSERT_TRUE(xm.is_contiguous());
  ExpectMatches(FusedLinear(xm, w), xm, w, {}, "misaligned x");
  // A decode step's x: [1, 1, k], a row of a wider buffer.
  const torch::Tensor xs = X(1, 2 * k, torch::kBFloat16).narrow(1, k, k);
  ExpectMatches(FusedLinear(xs.view({1, 1, k}), w), xs.view({1, 1, k}), w, {},
                "x [1, 1, k]");
}

TEST_F(GemvCudaTest, DispatchRules) {
  const torch::Tensor w = W(16, 64, torch::kBFloat16);
  const torch::Tensor x = X(1, 64, torch::kBFloat16);
  {
    torch::NoGradGuard g;
    EXPECT_TRUE(FusedGemvApplies(x, w));
    EXPECT_TRUE(FusedGemvApplies(X(4, 64, torch::kBFloat16), w));
    EXPECT_FALSE(FusedGemvApplies(X(5, 64, torch::kBFloat16), w));  // rows
    EXPECT_FALSE(FusedGemvApplies(X(0, 64, torch::kBFloat16), w));
    EXPECT_FALSE(FusedGemvApplies(X(1, 60, torch::kBFloat16),
                                  W(16, 60, torch::kBFloat16)));  // K % 8
    EXPECT_FALSE(FusedGemvApplies(X(1, 64, torch::kFloat),
                                  W(16, 64, torch::kFloat)));   // fp32
    EXPECT_FALSE(FusedGemvApplies(X(1, 64, torch::kHalf), w));  // mixed
    EXPECT_FALSE(FusedGemvApplies(x, W(64, 16, torch::kBFloat16).t()));
    EXPECT_FALSE(FusedGemvApplies(x, w, B(16, torch::kFloat)));  // bias dtype
    EXPECT_FALSE(FusedGemvApplies(x, w, B(17, torch::kBFloat16)));
    const torch::Tensor off =
        W(1, 16 * 64 + 1, torch::kBFloat16).view(-1).narrow(0, 1, 16 * 64);
    EXPECT_FALSE(FusedGemvApplies(x, off.view({16, 64})));  // misaligned w
    SetFusedKernels(false);
    EXPECT_FALSE(FusedGemvApplies(x, w));
    SetFusedKernels(true);
  }
  // Autograd: only when nothing needs a gradient.
  const torch::Tensor wg = w.detach().clone().requires_grad_(true);
  EXPECT_FALSE(FusedGemvApplies(x, wg));
  EXPECT_TRUE(LinearWithGemv(x, wg).requires_grad());
  {
    torch::NoGradGuard g;
    EXPECT_TRUE(FusedGemvApplies(x, wg));
  }
  EXPECT_TRUE(FusedGemvApplies(x, w));  // grad mode on, nothing requires it
}

TEST_F(GemvCudaTest, ReplaysInACudaGraph) {
  torch::NoGradGuard g;
  const int64_t n = 2049, k = 2560;
  const torch::Tensor w = W(n, k, torch::kBFloat16);
  torch::Tensor x = X(1, k, torch::kBFloat16).view({1, 1, k});
  CudaGraph graph;
  ASSERT_TRUE(graph.Capture(
      kCuda, [&] { LinearWithGemv(x, w); },
      [&] { return LinearWithGemv(x, w); }));
  for (int i = 0; i < 3; ++i) {
    x.copy_(X(1, k, torch::kBFloat16).view({1, 1, k}));
    const torch::Tensor y = graph.Replay();
    ExpectMatches(y, x, w, {}, "replay " + std::to_string(i));
  }
}

// In inference the vocabulary projection always takes the kernel, and the
// layers' projections take it where launches chain (compute capability 9.0
// and newer, chained launches on): model/fused_ops.h says why.
TEST_F(GemvCudaTest, LogitsAndChainedProjectionsTakeTheKernelInInference) {
  Projection p(256, 72, /*bias=*/true);
  p->to(kCuda, torch::kBFloat16);
  const torch::Tensor x = X(1, 256, torch::kBFloat16).view({1, 1, 256});
  const bool chains =
      at::cuda::getCurrentDeviceProperties()->major >= 9;  // Hopper and newer
  {
    torch::NoGradGuard g;
    EXPECT_EQ(GemvServesProjection(x, p->weight, p->bias), chains);
    const torch::Tensor y = p->forward(x);
    if (chains) {
      EXPECT_TRUE(torch::equal(y, FusedLinear(x, p->weight, p->bias)));
    }
    ExpectMatches(y, x, p->weight, p->bias, "projection");
    // Unchained, the layers' projections stay on cuBLAS.
    SetChainedLaunches(false);
    EXPECT_FALSE(GemvServesProjection(x, p->weight, p->bias));
    EXPECT_TRUE(torch::equal(
        p->forward(x), torch::nn::functional::linear(x, p->weight, p->bias)));
    SetChainedLaunches(true);
    // Prefill's many rows: cuBLAS.
    EXPECT_FALSE(GemvServesProjection(X(5, 256, torch::kBFloat16), p->weight,
                                      p->bias));
    const torch::Tensor embed = W(1003, 256, torch::kBFloat16);
    const torch::Tensor logits =
        VocabParallelLogits(x, embed, /*vocab_size=*/1003, TpOptions{});
    ExpectMatches(logits, x, embed, {}, "logits");
    EXPECT_TRUE(torch::equal(logits, FusedLinear(x, embed)));
  }
  // Training: the weights require grad, so at::linear with its grad_fn.
  const torch::Tensor y = p->forward(x);
  EXPECT_TRUE(y.requires_grad());
  const torch::Tensor ref =
      at::linear(x.to(torch::kFloat), p->weight.detach().to(torch::kFloat),
                 p->bias.detach().to(torch::kFloat));
  EXPECT_LT(
      ((y.detach().to(torch::kFloat) - ref).norm() / ref.norm()).item<double>(),
      1e-2);
}


// The gate_up GEMV with the gelu*up epilogue is bitwise the GEMV followed by
// the gelu*up kernel, for 1-4 rows, both dtypes, every compiled
// configuration with an even rows_per_warp and every K split, odd I (a
// partial last group) and K with a partial last column.
TEST_F(GemvCudaTest, GeluEpilogueIsBitwiseGemvThenGeluMul) {
  torch::NoGradGuard g;
  for (auto dtype : {torch::kBFloat16, torch::kHalf}) {
    for (int64_t inter : {int64_t{1}, int64_t{67}, int64_t{640}}) {
      const int64_t k = 2056;
      const torch::Tensor w = W(2 * inter, k, dtype);
      for (int64_t rows = 1; rows <= 4; ++rows) {
        const torch::Tensor x = X(rows, k, dtype).view({rows, 1, k});
        const torch::Tensor ref = FusedGeluMul(FusedLinear(x, w));
        const std::string at = Name(dtype) + " I " + std::to_string(inter) +
                               " rows " + std::to_string(rows);
        const torch::Tensor y = FusedGemvGeluMul(x, w);
        ASSERT_EQ(y.sizes(), ref.sizes()) << at;
        EXPECT_TRUE(torch::equal(y, ref)) << at;
        // And the math: gelu_tanh(gate) * up of the fp32 products.
        const auto parts = at::linear(x.to(torch::kFloat), w.to(torch::kFloat))
                               .chunk(2, -1);
        const torch::Tensor exact = torch::gelu(parts[0], "tanh") * parts[1];
        EXPECT_LT(Rel(y, exact), dtype == torch::kBFloat16 ? 1e-2 : 2e-3)
            << at;
        for (fused_cuda::GemvConfig c : fused_cuda::GemvCompiledConfigs()) {
          if (c.rows_per_warp % 2 != 0) {
            EXPECT_THROW(fused_cuda::GemvGeluMul(x, w, c), c10::Error);
            continue;
          }
          for (int split : {1, 2, 4}) {
            c.k_split = split;
            // The same configuration's GEMV (a K split sums in another
            // order), then the gelu*up kernel.
            const torch::Tensor want =
                FusedGeluMul(fused_cuda::Gemv(x, w, {}, c));
            EXPECT_TRUE(torch::equal(fused_cuda::GemvGeluMul(x, w, c), want))
                << at << " rw " << c.rows_per_warp << " u " << c.unroll
                << " p " << c.stages << " split " << split;
          }
        }
      }
    }
  }
  // An odd row count is no [gate; up] pair.
  EXPECT_THROW(FusedGemvGeluMul(X(1, 64, torch::kBFloat16),
                                W(7, 64, torch::kBFloat16)),
               c10::Error);
}

// The MLP in decode takes the fused GEMV where projections chain, with the
// same bits as the two kernels, and the down projection's GEMV after it.
TEST_F(GemvCudaTest, MlpDecodeRowsTakeTheGeluEpilogue) {
  GatedMlp mlp(GatedMlpOptions(256, 640));
  mlp->to(kCuda, torch::kBFloat16);
  torch::NoGradGuard g;
  const torch::Tensor x = X(1, 256, torch::kBFloat16).view({1, 1, 256});
  const torch::Tensor y = mlp->forward(x);
  const torch::Tensor two_kernels = LinearWithGemv(
      FusedGeluMul(LinearWithGemv(x, mlp->gate_up->weight)),
      mlp->down->weight);
  if (at::cuda::getCurrentDeviceProperties()->major >= 9) {
    EXPECT_TRUE(torch::equal(y, two_kernels));
  }
  SetChainedLaunches(false);
  const torch::Tensor cublas = mlp->forward(x);
  SetChainedLaunches(true);
  EXPECT_LT(Rel(y, cublas), 1e-2);
}

// A chain like a decode layer's (residual norm, GEMV, gelu GEMV, GEMV,
// residual norm, ... each reading the one before) gives the same bits with
// chained launches as without, eagerly and replayed from a CUDA graph: a
// kernel that read its input before the previous one finished would not.
TEST_F(GemvCudaTest, ChainedLaunchesGiveTheSameBits) {
  torch::NoGradGuard g;
  const int64_t h = 2048, inter = 4096, layers = 6;
  std::vector<torch::Tensor> up, down, norm;
  for (int64_t i = 0; i < layers; ++i) {
    up.push_back(W(2 * inter, h, torch::kBFloat16));
    down.push_back(W(h, inter, torch::kBFloat16));
    norm.push_back(B(h, torch::kBFloat16) * 0.1);
  }
  torch::Tensor x0 = X(1, h, torch::kBFloat16);
  auto chain = [&] {
    torch::Tensor res = x0, y = x0;
    for (int64_t i = 0; i < layers; ++i) {
      const torch::Tensor m = FusedLinear(FusedGemvGeluMul(y, up[i]), down[i]);
      std::tie(res, y) = FusedResidualNorm(
          res, m, norm[i], norm[(i + 1) % layers], 1e-6, 1.0);
    }
    return y;
  };
  SetChainedLaunches(false);
  const torch::Tensor ref = chain();
  SetChainedLaunches(true);
  EXPECT_TRUE(torch::equal(chain(), ref)) << "eager";
  for (bool chained : {true, false}) {
    SetChainedLaunches(chained);
    CudaGraph graph;
    ASSERT_TRUE(graph.Capture(kCuda, chain, chain));
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(torch::equal(graph.Replay(), ref))
          << (chained ? "chained" : "unchained") << " replay " << i;
    }
  }
  SetChainedLaunches(true);
  EXPECT_GT(ref.abs().max().item<float>(), 0.f);
}

#endif  // GEMMA_WITH_CUDA

}  // namespace
}  // namespace gemma
