#include "model/loss.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace gemma {
namespace {

// The plain formulation: full logits, then torch's cross_entropy.
torch::Tensor NaiveLoss(const torch::Tensor& hidden, const torch::Tensor& w,
                        const torch::Tensor& labels, double softcap) {
  const int64_t t = hidden.size(1);
  torch::Tensor z = torch::matmul(hidden, w.t()).to(torch::kFloat);
  if (softcap > 0) z = torch::tanh(z / softcap) * softcap;
  z = z.narrow(1, 0, t - 1).reshape({-1, w.size(0)});
  torch::Tensor y = labels.narrow(1, 1, t - 1).reshape({-1});
  return torch::nn::functional::cross_entropy(
      z, y,
      torch::nn::functional::CrossEntropyFuncOptions()
          .ignore_index(-100)
          .reduction(torch::kSum));
}

class LossTest : public ::testing::TestWithParam<double> {};

TEST_P(LossTest, MatchesFullLogitsLossAndGradients) {
  const double softcap = GetParam();
  torch::manual_seed(3);
  const int64_t b = 3, t = 11, h = 16, v = 50;
  torch::Tensor hidden = torch::randn({b, t, h}, torch::kDouble) * 2;
  torch::Tensor w = torch::randn({v, h}, torch::kDouble);
  torch::Tensor labels = torch::randint(0, v, {b, t}, torch::kLong);
  labels.index_put_({0, torch::indexing::Slice(0, 5)}, -100);
  labels.index_put_({2, torch::indexing::Slice(7, t)}, -100);

  torch::Tensor h1 = hidden.clone().requires_grad_(true);
  torch::Tensor w1 = w.clone().requires_grad_(true);
  LmLossOptions opt;
  opt.softcap = softcap;
  opt.chunk_tokens = 4;  // several chunks and a ragged last one
  LmLoss ours = CausalLmLoss(h1, w1, labels, opt);
  (ours.loss_sum * 0.5).backward();

  torch::Tensor h2 = hidden.clone().requires_grad_(true);
  torch::Tensor w2 = w.clone().requires_grad_(true);
  torch::Tensor ref = NaiveLoss(h2, w2, labels, softcap);
  (ref * 0.5).backward();

  EXPECT_NEAR(ours.loss_sum.item<double>(), ref.item<double>(),
              1e-4 * std::abs(ref.item<double>()));
  EXPECT_EQ(ours.tokens.item<int64_t>(),
            labels.narrow(1, 1, t - 1).ne(-100).sum().item<int64_t>());
  EXPECT_TRUE(torch::allclose(h1.grad(), h2.grad(), 1e-5, 1e-6))
      << (h1.grad() - h2.grad()).abs().max();
  EXPECT_TRUE(torch::allclose(w1.grad(), w2.grad(), 1e-5, 1e-6))
      << (w1.grad() - w2.grad()).abs().max();

  // Token accuracy counts argmax hits on target positions only.
  torch::Tensor z = torch::matmul(hidden, w.t()).narrow(1, 0, t - 1);
  torch::Tensor y = labels.narrow(1, 1, t - 1);
  int64_t hits = (z.argmax(-1).eq(y) & y.ne(-100)).sum().item<int64_t>();
  EXPECT_EQ(ours.correct.item<int64_t>(), hits);
}

INSTANTIATE_TEST_SUITE_P(Softcap, LossTest, ::testing::Values(0.0, 3.0));

// bf16 without soft-capping takes the reduced-precision path (logits never
// upcast whole, bf16 gradient matmuls): it must agree with transformers'
// formulation in bf16 (logits upcast, autograd) to bf16 rounding, with one
// chunk (gradient written directly) and with several (fp32 accumulation).
TEST(LossTest, Bf16MatchesFullLogitsLossToRounding) {
  torch::manual_seed(5);
  const int64_t b = 2, t = 40, h = 32, v = 300;
  torch::Tensor hidden = torch::randn({b, t, h}).to(torch::kBFloat16);
  torch::Tensor w = (torch::randn({v, h}) * 0.3).to(torch::kBFloat16);
  torch::Tensor labels = torch::randint(0, v, {b, t}, torch::kLong);
  labels.index_put_({0, torch::indexing::Slice(0, 9)}, -100);

  torch::Tensor h2 = hidden.clone().requires_grad_(true);
  torch::Tensor w2 = w.clone().requires_grad_(true);
  torch::Tensor ref = NaiveLoss(h2, w2, labels, 0.0);
  ref.backward();
  auto rel = [](const torch::Tensor& a, const torch::Tensor& r) {
    return ((a.to(torch::kFloat) - r.to(torch::kFloat)).norm() /
            r.to(torch::kFloat).norm())
        .item<double>();
  };
  for (int64_t chunk : {int64_t{4096}, int64_t{16}}) {
    torch::Tensor h1 = hidden.clone().requires_grad_(true);
    torch::Tensor w1 = w.clone().requires_grad_(true);
    LmLossOptions opt;
    opt.chunk_tokens = chunk;
    LmLoss ours = CausalLmLoss(h1, w1, labels, opt);
    ours.loss_sum.backward();
    EXPECT_NEAR(ours.loss_sum.item<double>(), ref.item<double>(),
                1e-3 * std::abs(ref.item<double>()))
        << "chunk " << chunk;
    EXPECT_EQ(h1.grad().scalar_type(), torch::kBFloat16);
    EXPECT_EQ(w1.grad().scalar_type(), torch::kBFloat16);
    EXPECT_LT(rel(h1.grad(), h2.grad()), 2e-2) << "chunk " << chunk;
    EXPECT_LT(rel(w1.grad(), w2.grad()), 2e-2) << "chunk " << chunk;
    // Ignored rows get exactly no gradient.
    EXPECT_EQ(h1.grad()[0].narrow(0, 0, 8).abs().sum().item<float>(), 0.0f);
  }
}

TEST(LossTest, FrozenHeadGetsNoGradientAndHiddenStillDoes) {
  torch::manual_seed(4);
  torch::Tensor hidden = torch::randn({2, 5, 8}).requires_grad_(true);
  torch::Tensor w = torch::randn({20, 8});
  torch::Tensor labels = torch::randint(0, 20, {2, 5}, torch::kLong);
  LmLoss l = CausalLmLoss(hidden, w, labels);
  l.loss_sum.backward();
  ASSERT_TRUE(hidden.grad().defined());
  EXPECT_GT(hidden.grad().abs().sum().item<double>(), 0);
  EXPECT_FALSE(w.grad().defined());
}

TEST(LossTest, ShapeMismatchIsAnError) {
  EXPECT_THROW(CausalLmLoss(torch::randn({2, 5, 8}), torch::randn({20, 7}),
                            torch::zeros({2, 5}, torch::kLong)),
               c10::Error);
  EXPECT_THROW(CausalLmLoss(torch::randn({2, 5, 8}), torch::randn({20, 8}),
                            torch::zeros({2, 4}, torch::kLong)),
               c10::Error);
}

}  // namespace
}  // namespace gemma
