// Expert parallelism of the Gemma 4 MoE over real Gloo ranks (threads, a real
// TCPStore on 127.0.0.1; worker/comm.h RunGlooRanks): EP=2 and EP=4 give the
// same logits and gradients as EP=1.
//
// Each rank feeds its own sequence (different lengths, so the all-to-all sizes
// differ per rank and per expert). With the loss sum_r <logits_r, probe_r>:
//   - a rank's logits equal the EP=1 model's on the same input;
//   - its expert weights' gradients equal its slice of the EP=1 gradient of
//     the whole loss (the experts see every rank's tokens);
//   - its replicated parameters' gradients equal the EP=1 gradient of its own
//     term (the data-parallel all-reduce that would sum them is not EP's job).
// The model is the parity fixture's tiny HF Gemma 4 (4 experts, top-2).
//
// Tensor parallelism (with EP folded over the TP ranks, and DP): every TP
// group feeds its own sequence; its ranks must give the TP=1 model's logits
// and vocab-parallel loss (with soft-capping) on it, and gradients that are
// exactly their shard of the TP=1 gradient (sharded weights), the whole of it
// (replicated), or a part summing over the TP group to it (q/k norms, the
// router and MoE norms, whose tokens are split over TP). The fixture's
// sliding layers have 2 KV heads and its full (K=V) layer 1: TP 2 and TP 4
// replicate KV heads over ranks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/gemma4.h"
#include "tests/parity/gemma4_tp_slice.h"
#include "model/hf_mapping_gemma4.h"
#include "worker/comm.h"

namespace gemma {
namespace {

std::string HfDir() {
  const char* env = std::getenv("GEMMA_PARITY_DATA");
  return std::string(env != nullptr ? env : GEMMA_BINARY_DIR "/parity_data_gemma4") +
         "/gemma4_text/hf";
}

struct RankData {
  torch::Tensor ids, probe;
};

std::vector<RankData> MakeInputs(int n, int64_t vocab) {
  torch::manual_seed(7);
  std::vector<RankData> out;
  for (int r = 0; r < n; ++r) {
    const int64_t len = 9 + 4 * r;  // different token counts per rank
    RankData d;
    d.ids = torch::randint(3, vocab, {1, len}, torch::kLong);
    d.probe = torch::randn({1, len, vocab});
    out.push_back(d);
  }
  return out;
}

double RelErr(const torch::Tensor& got, const torch::Tensor& ref) {
  const double scale = ref.abs().max().item<double>();
  return (got - ref).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

// With `idle`, every router's scale is zero: all logits tie, every token
// goes to the same top-k experts, and the EP ranks owning none of them
// receive no rows (their backward must still join the all-to-alls).
void ZeroRouterScales(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.named_parameters()) {
    if (absl::EndsWith(p.key(), "moe.router.scale")) p.value().zero_();
  }
}

void CheckEp(int ep, bool idle = false) {
  auto w = LoadGemma4Folder(HfDir());
  ASSERT_TRUE(w.ok()) << w.status();
  const int64_t vocab = w->config.vocab_size;
  const std::vector<RankData> inputs = MakeInputs(ep, vocab);

  // EP=1 references.
  auto ref_model = LoadGemma4TextModel(HfDir());
  ASSERT_TRUE(ref_model.ok()) << ref_model.status();
  Gemma4TextModel m1 = *ref_model;
  if (idle) ZeroRouterScales(*m1);
  std::vector<torch::Tensor> ref_logits;
  std::vector<std::map<std::string, torch::Tensor>> ref_grads_per_rank;
  std::map<std::string, torch::Tensor> ref_grads_total;
  for (int r = 0; r < ep; ++r) {
    m1->zero_grad();
    torch::Tensor logits = m1->forward(inputs[r].ids);
    (logits * inputs[r].probe).sum().backward();
    ref_logits.push_back(logits.detach());
    std::map<std::string, torch::Tensor> g;
    for (const auto& p : m1->named_parameters()) {
      g["text." + p.key()] = p.value().grad().clone();
      auto& total = ref_grads_total["text." + p.key()];
      total =
          total.defined() ? total + p.value().grad() : p.value().grad().clone();
    }
    ref_grads_per_rank.push_back(g);
  }

  std::mutex mu;
  std::vector<std::string> failures;
  absl::Status s = RunGlooRanks(
      ep,
      [&](int rank, ParallelGroups& groups) -> absl::Status {
        auto model = LoadGemma4TextModel(HfDir(), groups.ep);
        if (!model.ok()) return model.status();
        Gemma4TextModel m = *model;
        if (idle) ZeroRouterScales(*m);
        if (m->ep_size() != ep) return absl::InternalError("ep size not taken");
        m->zero_grad();
        torch::Tensor logits = m->forward(inputs[rank].ids);
        (logits * inputs[rank].probe).sum().backward();
        std::vector<std::string> bad;
        const double lerr = RelErr(logits.detach(), ref_logits[rank]);
        if (lerr > 1e-5) bad.push_back(absl::StrCat("logits rel err ", lerr));
        int experts_checked = 0;
        for (const auto& p : m->named_parameters()) {
          const std::string name = "text." + p.key();
          torch::Tensor want;
          if (name.find(".moe.experts.") != std::string::npos) {
            const int64_t local = p.value().size(0);
            want = ref_grads_total.at(name).narrow(0, rank * local, local);
            ++experts_checked;
          } else {
            want = ref_grads_per_rank[rank].at(name);
          }
          if (!p.value().grad().defined()) {
            // An idle rank's experts get no gradient: right if the whole
            // model's is zero there.
            if (idle && name.find(".moe.experts.") != std::string::npos &&
                want.abs().max().item<double>() == 0) {
              continue;
            }
            bad.push_back(name + ": no gradient");
            continue;
          }
          const double e = RelErr(p.value().grad(), want);
          if (e > 1e-5) bad.push_back(absl::StrCat(name, " grad rel err ", e));
        }
        if (experts_checked != 2 * m->config().num_layers) {
          bad.push_back(
              absl::StrCat("checked ", experts_checked, " expert tensors"));
        }
        std::lock_guard<std::mutex> lock(mu);
        for (auto& b : bad)
          failures.push_back(absl::StrCat("rank ", rank, ": ", b));
        return absl::OkStatus();
      },
      ParallelLayout{1, ep, ep});
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(failures.empty()) << absl::StrJoin(failures, "\n");
}

// tp x dp ranks, EP folded over them.
void CheckTp(int tp, int dp, int ep) {
  const int world = tp * dp;
  auto ref_model = LoadGemma4TextModel(HfDir());
  ASSERT_TRUE(ref_model.ok()) << ref_model.status();
  Gemma4TextModel m1 = *ref_model;
  const Gemma4TextConfig cfg = m1->config();
  const std::map<std::string, torch::Tensor> global = Gemma4StateDict(*m1);
  std::vector<RankData> inputs = MakeInputs(dp, cfg.vocab_size);
  std::vector<torch::Tensor> labels;
  for (const RankData& d : inputs) {
    torch::Tensor l = torch::randint(0, cfg.vocab_size, d.ids.sizes(),
                                     torch::kLong);
    l.index_put_({0, 0}, -100);
    labels.push_back(l);
  }
  // TP=1 references per DP group, and the expert gradients of all groups.
  std::vector<torch::Tensor> ref_logits, ref_loss;
  std::vector<std::map<std::string, torch::Tensor>> ref_grads;
  std::map<std::string, torch::Tensor> ref_total;
  for (int d = 0; d < dp; ++d) {
    m1->zero_grad();
    torch::Tensor hidden = m1->Decode(m1->Embed(inputs[d].ids), {});
    torch::Tensor logits = m1->Logits(hidden);
    LmLoss loss = m1->Loss(hidden, labels[d]);
    ((logits * inputs[d].probe).sum() + loss.loss_sum).backward();
    ref_logits.push_back(logits.detach());
    ref_loss.push_back(loss.loss_sum.detach());
    std::map<std::string, torch::Tensor> g;
    for (const auto& p : m1->named_parameters()) {
      const std::string name = "text." + p.key();
      g[name] = p.value().grad().clone();
      auto& total = ref_total[name];
      total = total.defined() ? total + g[name] : g[name].clone();
    }
    ref_grads.push_back(std::move(g));
  }

  std::mutex mu;
  std::vector<std::string> failures;
  absl::Status s = RunGlooRanks(
      world,
      [&](int rank, ParallelGroups& groups) -> absl::Status {
        const int tp_rank = rank % tp, d = rank / tp;
        TpOptions tpo;
        tpo.comm = groups.tp;
        Gemma4TextModel m(cfg, groups.ep, tpo);
        std::map<std::string, torch::Tensor> mine;
        for (const auto& [name, t] : global)
          mine[name] = Gemma4TpSlice(name, t, cfg, tp, tp_rank);
        absl::Status st = LoadGemma4Weights(*m, mine);
        if (!st.ok()) return st;
        m->zero_grad();
        torch::Tensor hidden = m->Decode(m->Embed(inputs[d].ids), {});
        torch::Tensor logits = m->Logits(hidden);
        LmLoss loss = m->Loss(hidden, labels[d]);
        ((logits * inputs[d].probe).sum() + loss.loss_sum).backward();
        std::vector<std::string> bad;
        double e = RelErr(logits.detach(), ref_logits[d]);
        if (e > 1e-4) bad.push_back(absl::StrCat("logits rel err ", e));
        e = RelErr(loss.loss_sum.detach(), ref_loss[d]);
        if (e > 1e-4) bad.push_back(absl::StrCat("loss rel err ", e));
        std::map<TpGrad, int> kinds;
        for (const auto& p : m->named_parameters()) {
          const std::string name = "text." + p.key();
          // A rank whose token chunk is empty (9 tokens over TP 4) gets no
          // gradient for the MoE block: count it as zeros (the sum over the
          // group must still be right).
          torch::Tensor got = p.value().grad().defined()
                                  ? p.value().grad().clone()
                                  : torch::zeros_like(p.value());
          torch::Tensor want;
          if (absl::StrContains(name, ".moe.experts.")) {
            groups.edp->AllReduceSum(got);
            const int64_t local = got.size(0);
            want = ref_total.at(name).narrow(0, groups.ep->rank() * local,
                                             local);
          } else {
            const TpGrad kind = Gemma4TpGrad(name, tpo);
            ++kinds[kind];
            if (kind == TpGrad::kPartial) groups.tp->AllReduceSum(got);
            want = kind == TpGrad::kSharded
                       ? Gemma4TpSlice(name, ref_grads[d].at(name), cfg, tp, tp_rank)
                       : ref_grads[d].at(name);
          }
          e = RelErr(got, want);
          if (e > 1e-4) bad.push_back(absl::StrCat(name, " grad rel err ", e));
        }
        if (tp > 1 && (kinds[TpGrad::kSharded] == 0 ||
                       kinds[TpGrad::kPartial] == 0)) {
          bad.push_back("no sharded or no partial parameters under TP");
        }
        std::lock_guard<std::mutex> lock(mu);
        for (auto& b : bad)
          failures.push_back(absl::StrCat("rank ", rank, ": ", b));
        return absl::OkStatus();
      },
      ParallelLayout{tp, dp, ep});
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(failures.empty()) << absl::StrJoin(failures, "\n");
}

TEST(Gemma4ExpertParallelTest, Ep2MatchesEp1) { CheckEp(2); }
TEST(Gemma4ExpertParallelTest, Ep4MatchesEp1) { CheckEp(4); }
TEST(Gemma4ExpertParallelTest, RanksWhoseExpertsGetNoTokens) {
  CheckEp(4, /*idle=*/true);
}

TEST(Gemma4TensorParallelTest, Tp2MatchesTp1) { CheckTp(2, 1, 1); }
TEST(Gemma4TensorParallelTest, Tp4ReplicatesKvHeads) { CheckTp(4, 1, 1); }
TEST(Gemma4TensorParallelTest, Tp2Ep2FoldedOnTwoRanks) { CheckTp(2, 1, 2); }
TEST(Gemma4TensorParallelTest, Tp2Dp2Ep4) { CheckTp(2, 2, 4); }
TEST(Gemma4TensorParallelTest, Tp2Dp2Ep2) { CheckTp(2, 2, 2); }

}  // namespace
}  // namespace gemma
