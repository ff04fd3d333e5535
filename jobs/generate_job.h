// Text generation from conversations, and the `generate` job kind.
//
// TextGenerator turns conversations (HF messages shape, images allowed) into
// model output text: each prompt is rendered with Gemma 3's chat template and
// the generation prompt ("<start_of_turn>model\n"), the batch is left-padded
// (positions from the attention mask, as transformers' generate does), and
// decoding runs with the KV cache: greedy, or temperature / top-k / top-p
// sampling from `seed`. A row stops at <end_of_turn>, <eos> or the model's
// eos ids (the token is kept in `tokens`, not in `text`), or when its decoded
// text contains one of the stop strings (`text` ends before the stop string;
// `tokens` end with the token that completed it). Ids past the tokenizer's
// vocabulary (a padded model vocabulary) stay in `tokens` but have no text.
//
// The `generate` job: spec.generate.input (JSONL; one conversation per line,
// optional "id"; images relative to the file; a trailing assistant turn is
// dropped from the prompt and written back as "reference") or
// spec.generate.prompts (text-only user prompts, ids "prompt-N"); batches of
// generate.batch_size (default 8); JSONL out to spec.generate.output (or
// spec.output), written to a temp name and renamed, one line per input in
// input order: {"id", "prompt", "output", "tokens", "finish_reason"} with
// finish_reason "stop" or "length". Progress after every batch (examples done
// of total, tokens_per_second).
#ifndef GEMMA_JOBS_GENERATE_JOB_H_
#define GEMMA_JOBS_GENERATE_JOB_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/chat.h"
#include "data/image.h"
#include "data/tokenizer.h"
#include "jobs/job.h"
#include "jobs/train_model.h"
#include "model/gemma4_model.h"
#include "model/generate.h"
#include "model/vl_model.h"

namespace gemma {

struct TextGenerationOptions {
  int64_t max_new_tokens = 128;
  double temperature = 0.0;  // <= 0: greedy
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  std::vector<std::string> stop;  // stop strings
  int batch_size = 8;
  bool pan_and_scan = false;
};

struct GenerationRequest {
  std::string id;
  Conversation prompt;    // ends with a user turn
  std::string reference;  // the dropped assistant turn's text, if any
};

struct GenerationOutput {
  std::string id;
  std::string prompt;  // the rendered prompt text (image tokens collapsed)
  std::string text;
  std::vector<int64_t> tokens;
  std::string finish_reason;  // "stop" or "length"
  std::string reference;
};

class TextGenerator {
 public:
  // `model` and `tokenizer` must outlive the generator.
  TextGenerator(Gemma3Model model, const Tokenizer* tokenizer);
  // Gemma 4 (text or VL): the Gemma 4 chat format, images through the
  // Gemma 4 processor (`max_soft_tokens` per image), model/gemma4_model.h's
  // GenerateGemma4.
  TextGenerator(Gemma4Model model, const Tokenizer* tokenizer,
                int max_soft_tokens = 280);

  // Generates for `requests` in batches of options.batch_size, in order;
  // `on_batch(done, total)` after each batch (false: stop, CANCELLED).
  // Errors name the request's source (file:line) for bad images or prompts.
  absl::StatusOr<std::vector<GenerationOutput>> Run(
      const std::vector<GenerationRequest>& requests,
      const TextGenerationOptions& options,
      const std::function<bool(int64_t, int64_t)>& on_batch = {});

 private:
  absl::StatusOr<std::vector<GenerationOutput>> RunBatch(
      const GenerationRequest* begin, const GenerationRequest* end,
      const TextGenerationOptions& options, uint64_t seed);

  // The Gemma 4 counterpart of the prompt encoding and generation.
  absl::StatusOr<std::vector<GenerationOutput>> RunBatchGemma4(
      const GenerationRequest* begin, const GenerationRequest* end,
      const TextGenerationOptions& options, uint64_t seed);
  // Shared: stop handling, generation and decoding of one batch whose
  // prompt is encoded; `generate` runs the model.
  absl::StatusOr<std::vector<GenerationOutput>> Finish(
      const GenerationRequest* begin, int64_t b,
      const std::vector<std::string>& prompts, std::set<int64_t> stop_ids,
      const TextGenerationOptions& options, uint64_t seed,
      const std::function<
          absl::StatusOr<GenerateResult>(const GenerateOptions&)>& generate);

  Gemma3Model model_{nullptr};
  Gemma4Model gemma4_{nullptr};
  int max_soft_tokens_ = 280;
  const Tokenizer* tokenizer_;
};

// Splits a conversation into prompt (up to the last assistant turn) and that
// turn's text (text parts trimmed and joined, as the chat template renders
// them). A conversation without an assistant turn is all prompt.
GenerationRequest SplitAtLastModelTurn(const Conversation& conv,
                                       const std::string& id);

// Reads generation input JSONL: errors (InvalidArgument / NotFound) name
// "file:line" for bad JSON, bad conversations and missing images.
absl::StatusOr<std::vector<GenerationRequest>> ReadGenerationInput(
    const std::string& path);

// Writes `outputs` as JSONL to `path` (temp name, then rename).
absl::Status WriteGenerationOutput(
    const std::string& path, const std::vector<GenerationOutput>& outputs);

std::unique_ptr<Job> NewGenerateJob();

// Shared by the eval and generate jobs and `gemmactl local generate`.
//
// The model at `path`: any folder model/weights.h LoadModel reads, or a PEFT
// adapter checkpoint (model/lora.h: adapter.json + adapter.safetensors), which
// loads its base_model and attaches the adapters. Eval mode (no dropout).
absl::StatusOr<Gemma3Model> LoadJobModel(const std::string& path);

// The model of an inference job (eval, generate) on one rank with every
// expert: spec.model.path is an HF folder, our checkpoint or an adapter
// checkpoint (its base loaded, the adapters attached), Gemma 3 or Gemma 4,
// moved to `device` in spec.model.dtype and in eval mode. Exactly one of
// gemma3 / gemma4 is set.
struct InferenceModel {
  Gemma3Model gemma3{nullptr};
  std::unique_ptr<TrainModel> gemma4;  // teacher-forced loss: TrainModel::Loss
  at::ScalarType dtype = at::kFloat;
  // A generator over this model (Gemma 4: its processor's soft-token budget).
  TextGenerator Generator(const Tokenizer* tokenizer);
};
// Errors name spec.model.dtype, the folder, or the tokenizer whose image ids
// differ from the model's.
absl::StatusOr<InferenceModel> OpenInferenceModel(
    const gemma::v1::JobSpec& spec, const Tokenizer& tokenizer,
    const c10::Device& device);

// The tokenizer of `spec.model`: model.tokenizer, else
// <model.path>/tokenizer.model, else (adapter checkpoints) the base model's.
std::string TokenizerPathOf(const gemma::v1::ModelSpec& model);

}  // namespace gemma

#endif  // GEMMA_JOBS_GENERATE_JOB_H_
