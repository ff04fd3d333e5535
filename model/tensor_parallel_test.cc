// Tensor-parallel pieces on 2 and 4 real Gloo ranks (threads, real TCPStore)
// against LibTorch autograd on the unsharded computation: values and every
// gradient within 1e-5 (fp32).
#include "model/tensor_parallel.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "worker/comm.h"

namespace gemma {
namespace {

#define RANK_EXPECT_CLOSE(a, b)                                            \
  do {                                                                     \
    const torch::Tensor _a = (a), _b = (b);                                \
    if (_a.sizes() != _b.sizes() ||                                        \
        !torch::allclose(_a, _b, /*rtol=*/1e-5, /*atol=*/1e-5)) {          \
      return absl::InternalError(absl::StrCat(                             \
          "rank ", rank, ": " #a " != " #b ", max diff ",                  \
          _a.sizes() == _b.sizes() ? (_a - _b).abs().max().item<double>()  \
                                   : -1.0));                               \
    }                                                                      \
  } while (0)

class TpTest : public ::testing::TestWithParam<int> {};

// A column-parallel then row-parallel MLP, y = (gelu(x W1^T)) W2^T, with W1's
// rows and W2's columns split, equals the full one; so do dx, dW1, dW2.
TEST_P(TpTest, ColumnThenRowParallelMlpMatchesTheFullOne) {
  const int n = GetParam();
  const int64_t b = 3, h = 8, inter = 16;
  torch::manual_seed(7);
  const torch::Tensor x0 = torch::randn({b, h});
  const torch::Tensor w1_0 = torch::randn({inter, h});
  const torch::Tensor w2_0 = torch::randn({h, inter});
  const torch::Tensor gy = torch::randn({b, h});
  // Reference on the whole matrices.
  torch::Tensor x = x0.clone().requires_grad_();
  torch::Tensor w1 = w1_0.clone().requires_grad_();
  torch::Tensor w2 = w2_0.clone().requires_grad_();
  torch::Tensor y = torch::matmul(torch::gelu(torch::matmul(x, w1.t())), w2.t());
  y.backward(gy);
  absl::Status s = RunGlooRanks(
      n,
      [&](int rank, ParallelGroups& g) -> absl::Status {
        const int64_t part = inter / n;
        torch::Tensor xl = x0.clone().requires_grad_();
        torch::Tensor w1l =
            w1_0.narrow(0, rank * part, part).clone().requires_grad_();
        torch::Tensor w2l =
            w2_0.narrow(1, rank * part, part).clone().requires_grad_();
        torch::Tensor a = torch::gelu(
            torch::matmul(CopyToTpRegion(xl, *g.tp), w1l.t()));
        torch::Tensor yl =
            ReduceFromTpRegion(torch::matmul(a, w2l.t()), *g.tp);
        yl.backward(gy);
        RANK_EXPECT_CLOSE(yl.detach(), y.detach());
        RANK_EXPECT_CLOSE(xl.grad(), x.grad());
        RANK_EXPECT_CLOSE(w1l.grad(), w1.grad().narrow(0, rank * part, part));
        RANK_EXPECT_CLOSE(w2l.grad(), w2.grad().narrow(1, rank * part, part));
        return absl::OkStatus();
      },
      ParallelLayout{n, 1, 1});
  EXPECT_TRUE(s.ok()) << s;
}

// Scatter then gather along the last dim is the identity in value, and the
// gradients pass through: d(sum(gather(scatter(x) * c_rank)))/dx.
TEST_P(TpTest, ScatterAndGatherAreInverseWithMatchingGradients) {
  const int n = GetParam();
  torch::manual_seed(3);
  const torch::Tensor x0 = torch::randn({2, 4 * n});
  const torch::Tensor scale0 = torch::randn({2, 4 * n});
  torch::Tensor x = x0.clone().requires_grad_();
  (x * scale0).pow(2).sum().backward();
  absl::Status s = RunGlooRanks(
      n,
      [&](int rank, ParallelGroups& g) -> absl::Status {
        torch::Tensor xl = x0.clone().requires_grad_();
        torch::Tensor part = ScatterToTpRegion(xl, *g.tp);
        if (part.size(1) != 4) {
          return absl::InternalError("scatter kept the wrong width");
        }
        RANK_EXPECT_CLOSE(part.detach(), x0.narrow(1, 4 * rank, 4));
        torch::Tensor sc = scale0.narrow(1, 4 * rank, 4);
        torch::Tensor full = GatherFromTpRegion(part * sc, *g.tp);
        RANK_EXPECT_CLOSE(full.detach(), x0 * scale0);
        full.pow(2).sum().backward();
        RANK_EXPECT_CLOSE(xl.grad(), x.grad());
        return absl::OkStatus();
      },
      ParallelLayout{n, 1, 1});
  EXPECT_TRUE(s.ok()) << s;
}

TEST(VocabShardTest, PadsTheVocabToAMultipleOfTp) {
  VocabShard a = VocabShardOf(10, 4, 0);
  EXPECT_EQ(a.start, 0);
  EXPECT_EQ(a.rows, 3);
  EXPECT_EQ(a.valid, 3);
  VocabShard d = VocabShardOf(10, 4, 3);
  EXPECT_EQ(d.start, 9);
  EXPECT_EQ(d.rows, 3);
  EXPECT_EQ(d.valid, 1);
  VocabShard e = VocabShardOf(262208, 4, 3);
  EXPECT_EQ(e.rows, 65552);
  EXPECT_EQ(e.valid, 65552);
}

// Padded shard of `full` [V, H] for `rank` (zeros in the padding rows).
torch::Tensor ShardRows(const torch::Tensor& full, const VocabShard& s) {
  torch::Tensor out = torch::zeros({s.rows, full.size(1)});
  if (s.valid > 0) out.narrow(0, 0, s.valid).copy_(full.narrow(0, s.start, s.valid));
  return out;
}

TEST_P(TpTest, VocabParallelEmbeddingMatchesTheFullTable) {
  const int n = GetParam();
  const int64_t vocab = 11, h = 5;  // 11 does not split evenly: padding
  torch::manual_seed(5);
  const torch::Tensor w0 = torch::randn({vocab, h});
  const torch::Tensor ids = torch::tensor({{0, 3, 10, 7}, {10, 10, 1, 5}});
  const torch::Tensor gy = torch::randn({2, 4, h});
  torch::Tensor w = w0.clone().requires_grad_();
  torch::Tensor y = torch::embedding(w, ids);
  y.backward(gy);
  absl::Status s = RunGlooRanks(
      n,
      [&](int rank, ParallelGroups& g) -> absl::Status {
        VocabShard sh = VocabShardOf(vocab, n, rank);
        torch::Tensor wl = ShardRows(w0, sh).requires_grad_();
        torch::Tensor yl = VocabParallelEmbedding(ids, wl, sh, *g.tp);
        yl.backward(gy);
        RANK_EXPECT_CLOSE(yl.detach(), y.detach());
        RANK_EXPECT_CLOSE(wl.grad().narrow(0, 0, sh.valid),
                          w.grad().narrow(0, sh.start, sh.valid));
        return absl::OkStatus();
      },
      ParallelLayout{n, 1, 1});
  EXPECT_TRUE(s.ok()) << s;
}

// The vocab-parallel fused CE equals cross-entropy on the materialised full
// logits (sum over targets, label -100 ignored, soft-capped), in loss,
// token accuracy and the gradients of the hidden states and the head.
void CheckLoss(int n, double softcap, int64_t chunk) {
  const int64_t b = 2, t = 6, h = 8, vocab = 13;
  torch::manual_seed(11);
  const torch::Tensor hidden0 = torch::randn({b, t, h});
  const torch::Tensor w0 = torch::randn({vocab, h}) * 0.5;
  torch::Tensor labels = torch::randint(0, vocab, {b, t});
  labels.index_put_({0, 2}, -100);
  labels.index_put_({1, 4}, -100);
  labels.index_put_({1, 5}, vocab - 1);  // a target in the last shard
  // Reference: logits of every shifted position, fp32.
  torch::Tensor hidden = hidden0.clone().requires_grad_();
  torch::Tensor w = w0.clone().requires_grad_();
  torch::Tensor z = torch::matmul(hidden.narrow(1, 0, t - 1), w.t());
  if (softcap > 0) z = softcap * torch::tanh(z / softcap);
  torch::Tensor y = labels.narrow(1, 1, t - 1).reshape({-1});
  torch::Tensor zf = z.reshape({-1, vocab});
  torch::Tensor ref = torch::nn::functional::cross_entropy(
      zf, y,
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(-100));
  ref.backward();
  const int64_t ref_correct =
      (zf.argmax(1).eq(y) & y.ne(-100)).sum().item<int64_t>();
  const int64_t ref_tokens = y.ne(-100).sum().item<int64_t>();
  absl::Status s = RunGlooRanks(
      n,
      [&](int rank, ParallelGroups& g) -> absl::Status {
        VocabShard sh = VocabShardOf(vocab, n, rank);
        torch::Tensor hl = hidden0.clone().requires_grad_();
        torch::Tensor wl = ShardRows(w0, sh).requires_grad_();
        LmLossOptions opts;
        opts.softcap = softcap;
        opts.chunk_tokens = chunk;
        LmLoss l = VocabParallelCausalLmLoss(hl, wl, sh, vocab, labels, *g.tp,
                                             opts);
        l.loss_sum.backward();
        RANK_EXPECT_CLOSE(l.loss_sum.detach(), ref.detach());
        if (l.tokens.item<int64_t>() != ref_tokens ||
            l.correct.item<int64_t>() != ref_correct) {
          return absl::InternalError(absl::StrCat(
              "rank ", rank, ": tokens/correct ", l.tokens.item<int64_t>(), "/",
              l.correct.item<int64_t>(), " want ", ref_tokens, "/",
              ref_correct));
        }
        RANK_EXPECT_CLOSE(hl.grad(), hidden.grad());
        RANK_EXPECT_CLOSE(wl.grad().narrow(0, 0, sh.valid),
                          w.grad().narrow(0, sh.start, sh.valid));
        if (sh.valid < sh.rows) {
          RANK_EXPECT_CLOSE(wl.grad().narrow(0, sh.valid, sh.rows - sh.valid),
                            torch::zeros({sh.rows - sh.valid, h}));
        }
        return absl::OkStatus();
      },
      ParallelLayout{n, 1, 1});
  EXPECT_TRUE(s.ok()) << s;
}

TEST_P(TpTest, VocabParallelLossMatchesCrossEntropy) { CheckLoss(GetParam(), 0, 4); }
TEST_P(TpTest, VocabParallelLossWithSoftcapMatchesCrossEntropy) {
  CheckLoss(GetParam(), 3.0, 3);
}

INSTANTIATE_TEST_SUITE_P(Ranks, TpTest, ::testing::Values(2, 4),
                         [](const auto& info) {
                           return absl::StrCat("tp", info.param);
                         });

TEST(TpTest1, OneRankGroupsAreThePlainOps) {
  SingleRankComm one;
  torch::Tensor x = torch::randn({2, 3});
  EXPECT_TRUE(CopyToTpRegion(x, one).is_same(x));
  EXPECT_TRUE(ReduceFromTpRegion(x, one).is_same(x));
  const int64_t vocab = 7;
  torch::Tensor w = torch::randn({vocab, 3});
  torch::Tensor labels = torch::tensor({{1, 2, 6, 0}});
  torch::Tensor hid = torch::randn({1, 4, 3});
  LmLoss a = VocabParallelCausalLmLoss(hid, w, VocabShardOf(vocab, 1, 0), vocab,
                                       labels, one);
  LmLoss b = CausalLmLoss(hid, w, labels);
  EXPECT_TRUE(torch::allclose(a.loss_sum, b.loss_sum, 1e-5, 1e-5));
  EXPECT_EQ(a.correct.item<int64_t>(), b.correct.item<int64_t>());
}

}  // namespace
}  // namespace gemma
