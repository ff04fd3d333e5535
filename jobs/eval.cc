#include "jobs/eval.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "data/batch.h"
#include "data/dataset.h"
#include "data/metrics.h"
#include "jobs/generate_job.h"
#include "jobs/one_rank_job.h"
#include "jobs/train_model.h"
#include "model/checkpoint.h"
#include "model/loss.h"
#include "model/weights.h"

namespace gemma {
namespace {

absl::Status WriteJsonAtomically(const std::string& path,
                                 const nlohmann::json& j) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f)
      return absl::PermissionDeniedError(absl::StrCat(tmp, ": cannot write"));
    f << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
      << "\n";
    f.flush();
    if (!f) return absl::DataLossError(absl::StrCat(tmp, ": write failed"));
  }
  return RenamePath(tmp, path);
}

class EvalJob : public OneRankJob {
 public:
  EvalJob() : OneRankJob("eval") {}

 private:
  // Loss of one batch, added to `m`.
  absl::Status AddBatchLoss(Gemma3Model& model, const Batch& batch,
                            const c10::Device& dev, at::ScalarType dtype,
                            double softcap, LossMetrics* m) {
    torch::NoGradGuard no_grad;
    ModelInputs in;
    in.input_ids = batch.input_ids.to(dev);
    const bool images =
        batch.pixel_values.defined() && batch.pixel_values.size(0) > 0;
    if (images) {
      in.pixel_values = batch.pixel_values.to(dev).to(dtype);
      in.token_type_ids = batch.token_type_ids.to(dev);
    }
    DecoderInputs d;
    d.attention_mask = batch.attention_mask.to(dev);
    d.position_ids = batch.position_ids.to(dev);
    if (images) d.block_ids = BlockIdsFromTokenTypes(in.token_type_ids);
    torch::Tensor hidden = model->text->Decode(model->Embeddings(in), d);
    LmLossOptions lo;
    lo.softcap = softcap;
    LmLoss l = model->text->Loss(hidden, batch.labels.to(dev), lo);
    m->Add(l.loss_sum.item<double>(), l.tokens.item<int64_t>(),
           l.correct.item<int64_t>());
    return absl::OkStatus();
  }

  // Loss of one batch through a TrainModel (Gemma 4), added to `m`.
  absl::Status AddTrainModelLoss(TrainModel& model, const Batch& batch,
                                 const c10::Device& dev, at::ScalarType dtype,
                                 LossMetrics* m) {
    torch::NoGradGuard no_grad;
    const Batch b = BatchOnDevice(batch, dev, dtype);
    LmLoss l = model.Loss(b, /*packed=*/false, /*recompute=*/false);
    m->Add(l.loss_sum.item<double>(), l.tokens.item<int64_t>(),
           l.correct.item<int64_t>());
    return absl::OkStatus();
  }

  absl::Status RunOneRank(RankContext& ctx) override {
    const auto& spec = ctx.spec;
    const auto& e = spec.eval();
    const std::string data_path =
        spec.data().eval().empty() ? spec.data().train() : spec.data().eval();
    if (data_path.empty())
      return absl::InvalidArgumentError("spec.data.eval: required");
    std::string report = e.report();
    if (report.empty()) report = spec.output();
    if (report.empty() && !spec.checkpoint().root().empty())
      report = spec.checkpoint().root() + "/eval.json";
    const auto t0 = std::chrono::steady_clock::now();

    ReadOptions ro;
    ro.skip_bad = spec.data().skip_bad();
    ReadStats stats;
    GEMMA_ASSIGN_OR_RETURN(std::vector<Conversation> data,
                           ReadDataset(data_path, ro, &stats));
    GEMMA_ASSIGN_OR_RETURN(auto tokenizer,
                           Tokenizer::Load(TokenizerPathOf(spec.model())));
    const c10::Device dev(ctx.device.empty() ? "cpu" : ctx.device);
    GEMMA_ASSIGN_OR_RETURN(InferenceModel model,
                           OpenInferenceModel(spec, *tokenizer, dev));
    const at::ScalarType dtype = model.dtype;
    TrainModel* g4 = model.gemma4.get();
    double softcap = 0.0;
    if (!g4) {
      const ModelConfig& config = model.gemma3->config();
      softcap =
          !config.is_vl() && config.text.final_logit_softcapping.has_value()
              ? *config.text.final_logit_softcapping
              : 0.0;
    }

    LossMetrics loss;
    BatchOptions bo;
    bo.batch_size = spec.data().batch_size() > 0 ? spec.data().batch_size() : 4;
    bo.seq_len = spec.data().seq_len() > 0 ? spec.data().seq_len() : 2048;
    bo.pad_to_multiple = spec.data().pad_to_multiple();
    bo.shuffle = false;
    bo.skip_bad = spec.data().skip_bad();
    if (g4) {
      g4->ConfigureBatches(bo);
    } else {
      const ModelConfig& config = model.gemma3->config();
      bo.chat.mm_tokens_per_image =
          static_cast<int>(config.mm_tokens_per_image);
      if (config.vision.has_value())
        bo.image.image_size = static_cast<int>(config.vision->image_size);
    }
    bo.image.do_pan_and_scan = spec.data().pan_and_scan();
    auto add_loss = [&](const Batch& b) {
      return g4 ? AddTrainModelLoss(*g4, b, dev, dtype, &loss)
                : AddBatchLoss(model.gemma3, b, dev, dtype, softcap, &loss);
    };

    const int64_t n = static_cast<int64_t>(data.size());
    int64_t batches = (n + bo.batch_size - 1) / bo.batch_size;
    if (e.max_batches() > 0) batches = std::min(batches, e.max_batches());
    const int64_t gen_n = std::min<int64_t>(e.generate_examples(), n);
    const int gen_batch = spec.generate().batch_size() > 0
                              ? spec.generate().batch_size()
                              : bo.batch_size;
    const int64_t gen_batches = (gen_n + gen_batch - 1) / gen_batch;
    const int64_t total_steps = batches + gen_batches;
    ctx.Log(
        absl::StrCat("eval: ", n, " conversations from ", data_path, ", ",
                     batches, " batches of ", bo.batch_size,
                     gen_n > 0 ? absl::StrCat(", generation on ", gen_n) : ""));
    ctx.Progress(0, total_steps, {});

    int64_t skipped = stats.skipped;
    for (int64_t i = 0; i < batches; ++i) {
      if (ctx.Cancelled()) return absl::CancelledError("eval cancelled");
      const int64_t from = i * bo.batch_size;
      const int64_t to = std::min(n, from + bo.batch_size);
      std::vector<Conversation> chunk(data.begin() + from, data.begin() + to);
      BatchOptions o = bo;
      o.batch_size = static_cast<int>(chunk.size());
      GEMMA_ASSIGN_OR_RETURN(auto loader,
                             DataLoader::Create(chunk, tokenizer.get(), o));
      GEMMA_ASSIGN_OR_RETURN(Batch batch, loader->Next());
      if (loader->skipped() == 0) {
        GEMMA_RETURN_IF_ERROR(add_loss(batch));
      } else {
        // A bad conversation was skipped and the batch refilled from the
        // chunk again: evaluate the chunk one conversation at a time instead.
        o.batch_size = 1;
        for (const Conversation& c : chunk) {
          GEMMA_ASSIGN_OR_RETURN(auto one,
                                 DataLoader::Create({c}, tokenizer.get(), o));
          absl::StatusOr<Batch> b = one->Next();
          if (!b.ok()) {
            ++skipped;
            continue;
          }
          GEMMA_RETURN_IF_ERROR(add_loss(*b));
        }
      }
      ctx.Progress(i + 1, total_steps,
                   {{"eval_loss", loss.loss()},
                    {"eval_token_accuracy", loss.accuracy()}});
    }

    std::map<std::string, double> metrics = {
        {"eval_loss", loss.loss()},
        {"eval_perplexity", loss.perplexity()},
        {"eval_token_accuracy", loss.accuracy()},
        {"eval_tokens", static_cast<double>(loss.tokens)},
        {"eval_examples",
         static_cast<double>(std::min(n, batches * bo.batch_size))},
        {"eval_skipped", static_cast<double>(skipped)}};
    nlohmann::json j = {{"model", spec.model().path()},
                        {"data", data_path},
                        {"examples", std::min(n, batches * bo.batch_size)},
                        {"skipped", skipped},
                        {"batches", batches},
                        {"loss", loss.loss()},
                        {"perplexity", loss.perplexity()},
                        {"token_accuracy", loss.accuracy()},
                        {"loss_sum", loss.loss_sum},
                        {"tokens", loss.tokens},
                        {"correct", loss.correct}};

    if (gen_n > 0) {
      std::vector<GenerationRequest> requests;
      for (int64_t k = 0;
           k < n && static_cast<int64_t>(requests.size()) < gen_n; ++k) {
        GenerationRequest r = SplitAtLastModelTurn(
            data[k], data[k].source.empty() ? absl::StrCat(k) : data[k].source);
        if (r.prompt.messages.size() < data[k].messages.size() &&
            !r.prompt.messages.empty())
          requests.push_back(std::move(r));
      }
      TextGenerationOptions go;
      go.max_new_tokens = e.max_new_tokens() > 0 ? e.max_new_tokens() : 128;
      go.batch_size = gen_batch;
      go.pan_and_scan = spec.data().pan_and_scan();
      TextGenerator gen = model.Generator(tokenizer.get());
      int64_t done_batches = 0;
      GEMMA_ASSIGN_OR_RETURN(std::vector<GenerationOutput> outs,
                             gen.Run(requests, go, [&](int64_t, int64_t) {
                               ctx.Progress(batches + ++done_batches,
                                            total_steps, {});
                               return !ctx.Cancelled();
                             }));
      GenerationMetrics gm;
      nlohmann::json samples = nlohmann::json::array();
      for (const GenerationOutput& o : outs) {
        gm.Add(o.text, o.reference);
        if (samples.size() < 20) {
          samples.push_back({{"id", o.id},
                             {"prediction", o.text},
                             {"reference", o.reference},
                             {"finish_reason", o.finish_reason}});
        }
      }
      j["generation"] = {{"examples", gm.examples()},
                         {"exact_match", gm.exact_match()},
                         {"cer", gm.cer()},
                         {"field_precision", gm.fields().precision()},
                         {"field_recall", gm.fields().recall()},
                         {"field_f1", gm.fields().f1()},
                         {"max_new_tokens", go.max_new_tokens},
                         {"samples", samples}};
      metrics["eval_generate_examples"] = static_cast<double>(gm.examples());
      metrics["eval_exact_match"] = gm.exact_match();
      metrics["eval_cer"] = gm.cer();
      metrics["eval_field_f1"] = gm.fields().f1();
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    j["seconds"] = secs;
    if (!report.empty()) GEMMA_RETURN_IF_ERROR(WriteJsonAtomically(report, j));
    ctx.Progress(total_steps, total_steps, metrics);
    ctx.Log(absl::StrFormat(
        "eval: loss %.4f, perplexity %.2f, token accuracy %.4f over %d tokens "
        "in %.2f s%s",
        loss.loss(), loss.perplexity(), loss.accuracy(), loss.tokens, secs,
        report.empty() ? "" : absl::StrCat(" -> ", report)));
    if (gen_n > 0) {
      ctx.Log(absl::StrFormat(
          "eval: generation exact match %.4f, CER %.4f, field F1 %.4f",
          metrics["eval_exact_match"], metrics["eval_cer"],
          metrics["eval_field_f1"]));
    }
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<Job> NewEvalJob() { return std::make_unique<EvalJob>(); }

}  // namespace gemma
