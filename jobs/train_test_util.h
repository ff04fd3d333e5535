// Test and benchmark fixtures for the trainers: a synthetic OCR data set with
// its tokenizer (data/synth.h) and a tiny random Gemma 3 VL model that fits
// it, written as our sharded checkpoint (plus tokenizer.model) so a job can
// name it in spec.model.path.
#ifndef GEMMA_JOBS_TRAIN_TEST_UTIL_H_
#define GEMMA_JOBS_TRAIN_TEST_UTIL_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace gemma {

struct TinyVlOptions {
  int hidden = 64;
  int intermediate = 128;
  int layers = 2;
  int heads = 4;
  int kv_heads = 2;
  int head_dim = 16;
  int vision_hidden = 32;
  int vision_layers = 1;
  int image_size = 32;  // the data's images are resized to this
  int patch_size = 8;
  int mm_tokens = 4;  // image soft tokens per image
  uint64_t seed = 0;
  double init_std = 0.05;
};

// The HF config.json text of the tiny model for a tokenizer of `vocab`
// pieces whose specials are those of data/tokenizer.h's trained models
// (<start_of_image> 7, <end_of_image> 8, <image_soft_token> 9).
std::string TinyVlConfigJson(const TinyVlOptions& options, int64_t vocab);

// Writes the model (random N(0, init_std) weights; biases and Gemma's (1 + w)
// norms at 0, SigLIP's LayerNorm scales at 1) to `dir` as our checkpoint and
// copies `tokenizer` next to it.
absl::Status WriteTinyVlModel(const std::string& dir,
                              const std::string& tokenizer,
                              const TinyVlOptions& options);

// A tiny text-only Gemma 4 mixture-of-experts model (Gemma4ForCausalLM):
// a sliding and a full layer (K=V on the full one, proportional RoPE),
// soft-capped logits, `experts` experts with top-2 routing in every layer.
struct TinyMoeOptions {
  int hidden = 48;
  int intermediate = 64;  // the dense MLP
  int layers = 2;
  int heads = 4;
  int kv_heads = 2;
  int head_dim = 16;
  int global_head_dim = 32;
  int experts = 4;
  int top_k = 2;
  int expert_intermediate = 32;
  // A VL model (Gemma4ForConditionalGeneration): a 1-layer vision tower with
  // 4-pixel patches pooled 2 x 2, its image tokens the tokenizer's, and a
  // processor_config.json with max_soft_tokens 70.
  bool vision = false;
  uint64_t seed = 0;
  double init_std = 0.05;
};

// Writes the model (an HF folder: config.json + model.safetensors; random
// N(0, init_std) matrices, norm and router scales 1 + N(0, init_std)) to
// `dir` for a tokenizer of `vocab` pieces, and copies `tokenizer` there.
absl::Status WriteTinyMoeModel(const std::string& dir,
                               const std::string& tokenizer,
                               const TinyMoeOptions& options);

// A tiny Gemma 4 tokenizer (data/tokenizer.h TrainTokenizer, with the Gemma 4
// chat and image pieces) trained on the lines of `corpus`, written to `path`.
absl::Status WriteTinyGemma4Tokenizer(const std::string& path,
                                      const std::string& corpus);

// data/synth.h OCR set of `n` examples (train.jsonl, tokenizer.model) under
// `dir` with images of `image_size`.
absl::Status WriteTinyOcrData(const std::string& dir, int n, uint64_t seed,
                              int image_size);

}  // namespace gemma

#endif  // GEMMA_JOBS_TRAIN_TEST_UTIL_H_
