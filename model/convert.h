// Conversions between Hugging Face Gemma 3 / Gemma 4 folders and our sharded
// checkpoints. The model family is read from config.json (model_type /
// text_config.model_type gemma4*: Gemma 4, text-only Gemma4ForCausalLM or VL
// Gemma4ForConditionalGeneration; else Gemma 3).
//
//   HF folder:  config.json + model.safetensors, or
//   model-0000i-of-0000n.safetensors
//               with model.safetensors.index.json; BF16, F16 or F32 (kept as
//               is).
//   Ours:       see model/checkpoint.h; layout {tp, ep}, max(tp, ep) rank
//               files. Gemma 3: tp dividing num_key_value_heads, ep 1.
//               Gemma 4: tp that its heads and intermediate_size allow
//               (CheckConvertLayout; KV heads fewer than tp are replicated),
//               any ep dividing num_experts (expert tensors split over EP,
//               the dense ones over TP, each shard stored once).
//
// Tensors are streamed: sources are memory-mapped and each output byte is
// copied once, straight into the mapped output file. Every conversion is
// bit-exact, so HF -> ours -> HF reproduces every tensor byte for byte.
//
//   ConvertOptions opt;
//   opt.tp = 2;
//   GEMMA_ASSIGN_OR_RETURN(ConvertStats s, ConvertHfToCheckpoint("/hf/gemma3",
//   "/ckpt/s0", opt));
#ifndef GEMMA_MODEL_CONVERT_H_
#define GEMMA_MODEL_CONVERT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/checkpoint.h"

namespace gemma {

struct ConvertOptions {
  int tp = 1;                             // TP size of a written checkpoint
  int ep = 1;                             // EP size of a written checkpoint
  uint64_t max_shard_bytes = 4ull << 30;  // HF export: split files above this
  bool verify_checksums = true;           // when reading our checkpoints
  bool overwrite = false;                 // replace an existing output folder
  ProgressFn progress;                    // (bytes done, bytes total)
};

struct ConvertStats {
  uint64_t bytes = 0;   // tensor bytes written
  int64_t tensors = 0;  // tensors written
  int64_t files = 0;    // data files written
  double seconds = 0;
};

// What a conversion needs to know about a model folder before it starts.
struct ModelFolderInfo {
  std::string config_source;  // "DIR/config.json" or
                              // "DIR/manifest.json: model_config"
  bool checkpoint = false;    // our sharded checkpoint (else an HF folder)
  bool gemma4 = false;
  bool vl = false;          // Gemma 4 VL (Gemma4ForConditionalGeneration)
  int tp = 1, ep = 1;       // the stored layout (checkpoints)
  int64_t num_experts = 0;  // Gemma 4 with MoE blocks, else 0
  // Gemma 4 text sizes that decide which tp splits it (0 when unknown, or
  // for kv heads when no layer has that type).
  int64_t num_heads = 0;
  int64_t sliding_kv_heads = 0;  // num_key_value_heads
  int64_t full_kv_heads = 0;     // num_global_key_value_heads
  int64_t intermediate_size = 0;
};

// What `config_json` (a config.json text, read from `source`) says: family,
// VL, experts and the Gemma 4 sizes above (checkpoint / tp / ep left as is).
ModelFolderInfo ModelInfoFromConfig(const std::string& config_json,
                                    const std::string& source);

// Reads DIR/manifest.json (our checkpoint) or DIR/config.json (HF). Errors
// name the file.
absl::StatusOr<ModelFolderInfo> InspectModelFolder(const std::string& dir);

// OK when `info`'s model can be written at {tp, ep}; INVALID_ARGUMENT naming
// `tp_field` / `ep_field` (the caller's spelling, e.g. "convert.ep") and the
// config values: Gemma 4 with a tp that does not divide num_attention_heads
// or intermediate_size, or whose KV heads (num_key_value_heads on sliding
// layers, num_global_key_value_heads on full ones) are neither a multiple of
// tp nor a divisor of it; ep > 1 without experts; ep not dividing
// num_experts. (Gemma 3's tp is checked by the split itself.)
absl::Status CheckConvertLayout(const ModelFolderInfo& info, int tp, int ep,
                                absl::string_view tp_field,
                                absl::string_view ep_field);

// HF folder -> our checkpoint at {options.tp, options.ep} (CheckConvertLayout;
// Gemma 3: tp must divide num_key_value_heads).
// Errors name the file and tensor: a missing config field, a shard listed in
// the index but absent, a tensor with the wrong shape, missing or unexpected
// tensors, mixed dtypes within a fused tensor.
absl::StatusOr<ConvertStats> ConvertHfToCheckpoint(
    const std::string& hf_dir, const std::string& out_dir,
    const ConvertOptions& options);

// Our checkpoint (any layout) -> HF folder that transformers loads as is:
// config.json, model.safetensors or size-sharded files with an index, HF keys
// as transformers 5.17 writes them (Gemma 4 VL: the
// Gemma4ForConditionalGeneration spelling), no lm_head (tied).
absl::StatusOr<ConvertStats> ConvertCheckpointToHf(
    const std::string& ckpt_dir, const std::string& out_dir,
    const ConvertOptions& options);

// Our checkpoint -> our checkpoint at another {tp, ep} layout; reads only the
// bytes each new rank file needs.
absl::StatusOr<ConvertStats> ReshardCheckpoint(const std::string& ckpt_dir,
                                               const std::string& out_dir,
                                               const ConvertOptions& options);

// An HF folder (Gemma 3 or 4) seen as our global tensors (zero-copy over the
// mapped files).
absl::StatusOr<std::unique_ptr<GlobalTensorSource>> OpenHfFolder(
    const std::string& hf_dir);

}  // namespace gemma

#endif  // GEMMA_MODEL_CONVERT_H_
