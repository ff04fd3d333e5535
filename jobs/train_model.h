// The model side of training, behind one interface so the trainer
// (jobs/trainer.h) runs Gemma 3 (dense, tensor parallel) and Gemma 4 (mixture
// of experts, expert parallel) alike.
//
// A TrainModel owns one rank's part of the model (its TP shard, its EP
// experts), knows how to compute the loss terms of a batch, how each
// trainable parameter's gradient is reduced, how to write and reload the
// model folder of a checkpoint, and which options the data loader needs.
//
//   GEMMA_ASSIGN_OR_RETURN(auto m, OpenTrainModel(dir, groups, spec));
//   m->module().to(device, dtype);
//   LmLoss l = m->Loss(batch_on_device);
#ifndef GEMMA_JOBS_TRAIN_MODEL_H_
#define GEMMA_JOBS_TRAIN_MODEL_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/batch.h"
#include "data/tokenizer.h"
#include "gemma/v1/job_spec.pb.h"
#include "model/comm.h"
#include "model/gemma4_model.h"
#include "model/loss.h"
#include "model/vl_model.h"

namespace gemma {

// How a trainable parameter's gradient is reduced across ranks.
enum class GradKind {
  kReplicated,  // the same on every TP rank; summed over DP
  kTpSharded,   // each TP rank holds another slice; summed over DP
  kTpPartial,   // partial over TP: summed over TP, then over DP
  kExpert,      // an expert this EP rank owns: summed over the
                // expert-data-parallel group (model/comm.h ParallelGroups)
};

// The GradKind of a parameter whose TP relation is `tp` (not an expert).
GradKind GradKindOf(TpGrad tp);

// Elements [begin, end) of trainable `param` (flattened) that this rank
// leaves out of the gradient norm because a lower TP rank holds them too
// (TrainParam::norm_skip): the replicated rows of a column-split projection's
// weight, LoRA B or DoRA m (model/projection_split.h LowerRankCopies; Gemma 4
// KV heads). `name` is the parameter's name in `modules` (the model's
// named_modules()); {0, 0}: none.
std::pair<int64_t, int64_t> ReplicaNormSkip(
    const torch::OrderedDict<std::string, std::shared_ptr<torch::nn::Module>>&
        modules,
    const std::string& name, const at::Tensor& param);

class TrainModel {
 public:
  virtual ~TrainModel() = default;

  // Every parameter and buffer, under our names (text.*, vision.*, ...).
  virtual torch::nn::Module& module() = 0;
  // The HF config.json text the weights came with.
  virtual const std::string& config_json() const = 0;

  // Sets what the data loader needs from the model (chat format, image
  // size, soft tokens per image).
  virtual void ConfigureBatches(BatchOptions& options) const = 0;
  // FailedPrecondition when the tokenizer's special ids differ from the
  // model's (image tokens of another tokenizer), naming both.
  virtual absl::Status CheckTokenizer(const Tokenizer& tokenizer) const {
    (void)tokenizer;
    return absl::OkStatus();
  }
  // Loss terms of one batch whose tensors are on the model's device
  // (pixel values already in the model's dtype). `packed`: rows hold
  // several conversations told apart by position_ids (no attention mask).
  // Under recompute the decoder layers keep only their inputs.
  virtual LmLoss Loss(const Batch& batch, bool packed, bool recompute) = 0;

  virtual GradKind Grad(const std::string& name) const = 0;

  // Writes the model folder of a checkpoint (our sharded format) into `dir`.
  // Collective over the ranks that hold different parts of the model (the
  // TP group, and the EP group for experts); every other DP replica must not
  // call it. Returns this rank's bytes.
  virtual absl::StatusOr<int64_t> Write(const std::string& dir,
                                        int64_t step) = 0;
  // Puts the weights of model folder `dir` (any layout this family reads)
  // into the parameters in place. Errors name the folder.
  virtual absl::Status Load(const std::string& dir) = 0;

  // Metrics of the steps since the last call (e.g. router load), summed over
  // the DP ranks: collective over the world, every rank calls it together.
  virtual std::map<std::string, double> TakeMetrics() { return {}; }

  // The concrete models, for code that needs one (PEFT adapters).
  virtual Gemma3Model* gemma3() { return nullptr; }
  virtual Gemma4Model* gemma4() { return nullptr; }
};

// `batch`'s tensors on `device` (pixel values in `pixel_dtype`, the model's
// dtype), as TrainModel::Loss takes them; non_blocking for pinned batches.
Batch BatchOnDevice(const Batch& batch, const c10::Device& device,
                    at::ScalarType pixel_dtype, bool non_blocking = false);

// Runs `load` (copying weights into a model under no_grad) and names `dir`
// in its error; LibTorch exceptions become errors too. The shared tail of
// TrainModel::Load.
absl::Status LoadIntoModel(const std::string& dir,
                           const std::function<absl::Status()>& load);

// Reads the model folder `dir` (HF, our checkpoint, our names; Gemma 3 or
// Gemma 4, told apart by its config) and builds this rank's part of it on the
// CPU in fp32: TP shard per groups.tp (spec.parallel.sequence_parallel
// honoured), EP experts per groups.ep. Errors name the folder and the field.
absl::StatusOr<std::unique_ptr<TrainModel>> OpenTrainModel(
    const std::string& dir, const ParallelGroups& groups,
    const gemma::v1::JobSpec& spec);

// The family of the model in folder `dir` ("gemma3" or "gemma4"), from its
// config.json or checkpoint manifest.
absl::StatusOr<std::string> ModelFamily(const std::string& dir);

// Gemma 4 part of OpenTrainModel (jobs/train_model_gemma4.cc).
absl::StatusOr<std::unique_ptr<TrainModel>> OpenGemma4TrainModel(
    const std::string& dir, const ParallelGroups& groups,
    const gemma::v1::JobSpec& spec);

}  // namespace gemma

#endif  // GEMMA_JOBS_TRAIN_MODEL_H_
