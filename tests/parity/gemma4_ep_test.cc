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
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/gemma4.h"
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

void CheckEp(int ep) {
  auto w = LoadGemma4Folder(HfDir());
  ASSERT_TRUE(w.ok()) << w.status();
  const int64_t vocab = w->config.vocab_size;
  const std::vector<RankData> inputs = MakeInputs(ep, vocab);

  // EP=1 references.
  auto ref_model = LoadGemma4TextModel(HfDir());
  ASSERT_TRUE(ref_model.ok()) << ref_model.status();
  Gemma4TextModel m1 = *ref_model;
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

TEST(Gemma4ExpertParallelTest, Ep2MatchesEp1) { CheckEp(2); }
TEST(Gemma4ExpertParallelTest, Ep4MatchesEp1) { CheckEp(4); }

}  // namespace
}  // namespace gemma
