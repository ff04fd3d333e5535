// The whole Gemma 3 model under tensor parallelism, on 2 and 4 real Gloo
// ranks (threads, real TCPStore), with and without sequence parallelism.
//
// Each case loads a tiny random model that transformers saved
// (make_reference.py) once whole (TP = 1) and once per rank as that rank's
// shard, read straight from the HF folder, and runs the training computation
// on the same batch: the gathered logits, the vocab-parallel loss, and the
// gradients of loss / tokens + mean(logits * probe) with respect to every
// parameter. Required (fp32):
//   logits          within 1e-5 of TP = 1 (relative to max |ref|), and within
//                   the parity bound 1e-4 of transformers' own logits;
//   loss, accuracy  loss within 1e-5 relative, correct tokens identical;
//   gradients       each rank's gradient, summed over the group where
//                   Gemma3TpGrad says it is partial, within 1e-5 (relative to
//                   the tensor's max) of its slice of the TP = 1 gradient;
//   greedy decoding identical tokens to transformers' with the KV cache.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/config.h"
#include "model/generate.h"
#include "model/vl_model.h"
#include "model/weights.h"
#include "tests/parity/raw_tensors.h"
#include "worker/comm.h"

namespace gemma {
namespace {

std::string DataDir() {
  if (const char* env = std::getenv("GEMMA_PARITY_DATA")) return env;
  return std::string(GEMMA_BINARY_DIR) + "/parity_data";
}

struct TpCase {
  std::string name;
  int tp;
  bool sp;
};

std::string CaseName(const ::testing::TestParamInfo<TpCase>& info) {
  return absl::StrCat(info.param.name, "_tp", info.param.tp,
                      info.param.sp ? "_sp" : "");
}

struct Outputs {
  torch::Tensor logits;
  double loss = 0;
  int64_t correct = 0;
  int64_t tokens = 0;
  std::map<std::string, torch::Tensor> grads;
};

ModelInputs InputsOf(const std::map<std::string, torch::Tensor>& io) {
  ModelInputs in;
  in.input_ids = io.at("input_ids");
  auto get = [&](const char* key) {
    return io.count(key) ? io.at(key) : torch::Tensor();
  };
  in.attention_mask = get("attention_mask");
  in.pixel_values = get("pixel_values");
  in.token_type_ids = get("token_type_ids");
  return in;
}

// The training computation of one batch; gradients of every parameter.
Outputs RunBatch(Gemma3Model& model, const ModelConfig& config,
                 const std::map<std::string, torch::Tensor>& io) {
  ModelInputs in = InputsOf(io);
  model->zero_grad();
  torch::Tensor embeds = model->Embeddings(in);
  DecoderInputs d;
  d.attention_mask = in.attention_mask;
  if (in.token_type_ids.defined())
    d.block_ids = BlockIdsFromTokenTypes(in.token_type_ids);
  torch::Tensor hidden = model->text->Decode(embeds, d);
  torch::Tensor logits = model->text->Logits(hidden);
  // Labels: every real text token.
  torch::Tensor labels = in.input_ids.clone();
  if (in.attention_mask.defined())
    labels.masked_fill_(in.attention_mask.eq(0), -100);
  if (config.is_vl())
    labels.masked_fill_(labels.eq(config.image_token_id), -100);
  LmLossOptions lo;
  if (!config.is_vl() && config.text.final_logit_softcapping)
    lo.softcap = *config.text.final_logit_softcapping;
  LmLoss loss = model->text->Loss(hidden, labels, lo);
  const double tokens = loss.tokens.item<double>();
  (loss.loss_sum / tokens + (logits * io.at("grad_probe")).mean()).backward();
  Outputs out;
  out.logits = logits.detach();
  out.loss = loss.loss_sum.item<double>() / tokens;
  out.correct = loss.correct.item<int64_t>();
  out.tokens = loss.tokens.item<int64_t>();
  for (const auto& p : model->named_parameters()) {
    out.grads[p.key()] = p.value().grad().defined()
                             ? p.value().grad().clone()
                             : torch::zeros_like(p.value());
  }
  return out;
}

double RelMaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a - b).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

class TpModelTest : public ::testing::TestWithParam<TpCase> {
 protected:
  void SetUp() override {
    torch::set_num_threads(1);
    dir_ = DataDir() + "/" + GetParam().name;
    auto config = LoadModelConfig(dir_ + "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    auto io = ReadRawTensors(dir_ + "/io");
    ASSERT_TRUE(io.ok()) << io.status();
    io_ = *io;
  }
  std::string dir_;
  ModelConfig config_;
  std::map<std::string, torch::Tensor> io_;
};

TEST_P(TpModelTest, LogitsLossAndEveryGradientEqualOneRank) {
  const TpCase c = GetParam();
  auto whole = LoadModel(dir_ + "/hf");
  ASSERT_TRUE(whole.ok()) << whole.status();
  const Outputs ref = RunBatch(*whole, config_, io_);
  const ShardDims dims{config_.text.num_kv_heads};

  std::mutex mu;
  std::vector<std::string> report;
  absl::Status st = RunGlooRanks(
      c.tp,
      [&](int rank, ParallelGroups& g) -> absl::Status {
        auto w = LoadModelWeights(dir_ + "/hf", c.tp, rank);
        if (!w.ok()) return w.status();
        TpOptions tp{g.tp, c.sp};
        auto model = BuildGemma3Model(config_, w->tensors, tp);
        if (!model.ok()) return model.status();
        Outputs got = RunBatch(*model, config_, io_);
        std::vector<std::string> bad;
        const double logit_diff = RelMaxDiff(got.logits, ref.logits);
        if (got.logits.sizes() != ref.logits.sizes() || logit_diff > 1e-5)
          bad.push_back(absl::StrCat("logits differ by ", logit_diff));
        const double hf_diff = RelMaxDiff(got.logits, io_.at("logits"));
        if (hf_diff > 1e-4)
          bad.push_back(absl::StrCat("logits vs transformers ", hf_diff));
        if (std::abs(got.loss - ref.loss) > 1e-5 * std::abs(ref.loss))
          bad.push_back(absl::StrCat("loss ", got.loss, " vs ", ref.loss));
        if (got.correct != ref.correct || got.tokens != ref.tokens)
          bad.push_back(absl::StrCat("correct ", got.correct, "/", got.tokens,
                                     " vs ", ref.correct, "/", ref.tokens));
        double worst = 0;
        std::string worst_name;
        for (auto& [name, grad] : got.grads) {
          const TpGrad kind = Gemma3TpGrad(name, tp);
          if (kind == TpGrad::kPartial) g.tp->AllReduceSum(grad);
          torch::Tensor want = ref.grads.at(name);
          if (kind == TpGrad::kSharded) {
            auto slice = SliceShard(name, want, dims, c.tp, rank);
            if (!slice.ok()) return slice.status();
            want = *slice;
          }
          if (grad.sizes() != want.sizes()) {
            bad.push_back(absl::StrCat(name, ": gradient shape"));
            continue;
          }
          const double d = RelMaxDiff(grad, want);
          if (d > worst) worst = d, worst_name = name;
          if (d > 1e-5) bad.push_back(absl::StrCat(name, ": gradient ", d));
        }
        std::lock_guard<std::mutex> lock(mu);
        report.push_back(absl::StrCat("rank ", rank, ": logits ", logit_diff,
                                      ", vs HF ", hf_diff, ", ",
                                      got.grads.size(), " gradients, worst ",
                                      worst, " (", worst_name, ")"));
        if (!bad.empty()) {
          std::string msg = absl::StrCat("rank ", rank, ":");
          for (const auto& b : bad) absl::StrAppend(&msg, " [", b, "]");
          return absl::InternalError(msg);
        }
        return absl::OkStatus();
      },
      ParallelLayout{c.tp, 1, 1});
  EXPECT_TRUE(st.ok()) << st;
  for (const auto& line : report) std::cout << "[tp] " << line << "\n";
}

// Decoding (KV cache: no sequence parallelism).
class TpDecodeTest : public TpModelTest {};

TEST_P(TpDecodeTest, GreedyDecodingWithTheCacheGivesTransformersTokens) {
  const TpCase c = GetParam();
  const torch::Tensor want = io_.at("greedy_tokens");
  absl::Status st = RunGlooRanks(
      c.tp,
      [&](int rank, ParallelGroups& g) -> absl::Status {
        auto w = LoadModelWeights(dir_ + "/hf", c.tp, rank);
        if (!w.ok()) return w.status();
        auto model = BuildGemma3Model(config_, w->tensors, TpOptions{g.tp});
        if (!model.ok()) return model.status();
        torch::NoGradGuard no_grad;
        GenerateOptions opts;
        opts.max_new_tokens = want.size(1);
        opts.use_cache = true;
        auto r = Generate(*model, InputsOf(io_), opts);
        if (!r.ok()) return r.status();
        if (!torch::equal(r->tokens, want)) {
          return absl::InternalError(absl::StrCat(
              "rank ", rank, ": tokens differ from transformers'"));
        }
        return absl::OkStatus();
      },
      ParallelLayout{c.tp, 1, 1});
  EXPECT_TRUE(st.ok()) << st;
}

TEST(TpModelErrors, AConfigThatDoesNotSplitIsRefusedNamingTheSizes) {
  // text_softcap_batch2 has one KV head: no 2-way split exists.
  const std::string dir = DataDir() + "/text_softcap_batch2";
  auto config = LoadModelConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  absl::Status st = RunGlooRanks(
      2,
      [&](int rank, ParallelGroups& g) -> absl::Status {
        auto w = LoadModelWeights(dir + "/hf", 2, rank);
        if (w.ok()) return absl::InternalError("the weights split 2 ways");
        if (w.status().message().find("qkv") == std::string::npos)
          return absl::InternalError(std::string(w.status().message()));
        std::map<std::string, torch::Tensor> none;
        auto model = BuildGemma3Model(*config, none, TpOptions{g.tp});
        if (model.ok()) return absl::InternalError("the model split 2 ways");
        if (model.status().message().find("KV heads (1)") == std::string::npos)
          return absl::InternalError(std::string(model.status().message()));
        return absl::OkStatus();
      },
      ParallelLayout{2, 1, 1});
  EXPECT_TRUE(st.ok()) << st;
}

INSTANTIATE_TEST_SUITE_P(Cases, TpModelTest,
                         ::testing::Values(TpCase{"vl_tp4_vocab503", 2, false},
                                           TpCase{"vl_tp4_vocab503", 4, false},
                                           TpCase{"vl_tp4_vocab503", 2, true},
                                           TpCase{"vl_tp4_vocab503", 4, true},
                                           TpCase{"text_mha", 2, false},
                                           TpCase{"text_mha", 2, true}),
                         CaseName);
INSTANTIATE_TEST_SUITE_P(Cases, TpDecodeTest,
                         ::testing::Values(TpCase{"vl_tp4_vocab503", 2, false},
                                           TpCase{"vl_tp4_vocab503", 4, false},
                                           TpCase{"text_mha", 2, false}),
                         CaseName);

}  // namespace
}  // namespace gemma
