#include "jobs/train_test_util.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "data/synth.h"
#include "data/tokenizer.h"
#include "jobs/train_state.h"
#include "model/config.h"
#include "model/gemma4.h"
#include "model/gemma4_model.h"
#include "model/hf_mapping_gemma4.h"
#include "model/safetensors_torch.h"
#include "model/vl_model.h"

namespace gemma {

std::string TinyVlConfigJson(const TinyVlOptions& o, int64_t vocab) {
  nlohmann::json c;
  c["model_type"] = "gemma3";
  c["architectures"] = {"Gemma3ForConditionalGeneration"};
  c["text_config"] = {{"model_type", "gemma3_text"},
                      {"vocab_size", vocab},
                      {"hidden_size", o.hidden},
                      {"intermediate_size", o.intermediate},
                      {"num_hidden_layers", o.layers},
                      {"num_attention_heads", o.heads},
                      {"num_key_value_heads", o.kv_heads},
                      {"head_dim", o.head_dim},
                      {"sliding_window", 64},
                      {"max_position_embeddings", 1024},
                      {"query_pre_attn_scalar", o.head_dim}};
  c["vision_config"] = {{"model_type", "siglip_vision_model"},
                        {"hidden_size", o.vision_hidden},
                        {"intermediate_size", 2 * o.vision_hidden},
                        {"num_hidden_layers", o.vision_layers},
                        {"num_attention_heads", 2},
                        {"image_size", o.image_size},
                        {"patch_size", o.patch_size},
                        {"vision_use_head", false}};
  c["mm_tokens_per_image"] = o.mm_tokens;
  c["boi_token_index"] = 7;
  c["eoi_token_index"] = 8;
  c["image_token_index"] = 9;
  c["eos_token_id"] = {1, 106};
  return c.dump(1);
}

absl::Status WriteTinyVlModel(const std::string& dir,
                              const std::string& tokenizer,
                              const TinyVlOptions& o) {
  GEMMA_ASSIGN_OR_RETURN(auto tok, Tokenizer::Load(tokenizer));
  const std::string json = TinyVlConfigJson(o, tok->vocab_size());
  GEMMA_ASSIGN_OR_RETURN(ModelConfig config,
                         ParseModelConfigText(json, "tiny"));
  Gemma3Model model(config);
  {
    torch::NoGradGuard no_grad;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
    for (auto& p : model->named_parameters()) {
      if (p.value().dim() == 1) {
        // Gemma's RMSNorms scale by (1 + w): 0; SigLIP's LayerNorms by w: 1
        // (at 0 the vision tower would start out blind); biases 0.
        const bool layer_norm_scale = absl::StartsWith(p.key(), "vision.") &&
                                      absl::EndsWith(p.key(), ".weight");
        p.value().fill_(layer_norm_scale ? 1.0 : 0.0);
      } else {
        p.value().copy_(at::normal(0.0, o.init_std, p.value().sizes(), gen));
      }
    }
  }
  GEMMA_RETURN_IF_ERROR(
      WriteModuleCheckpoint(dir, *model, json, config.text.num_kv_heads, 0)
          .status());
  return CopyFile(tokenizer, absl::StrCat(dir, "/tokenizer.model"));
}

absl::Status WriteTinyMoeModel(const std::string& dir,
                               const std::string& tokenizer,
                               const TinyMoeOptions& o) {
  GEMMA_ASSIGN_OR_RETURN(auto tok, Tokenizer::Load(tokenizer));
  Gemma4TextConfig c;
  c.vocab_size = tok->vocab_size();
  c.hidden_size = o.hidden;
  c.intermediate_size = o.intermediate;
  c.num_layers = o.layers;
  c.num_heads = o.heads;
  c.num_kv_heads = o.kv_heads;
  c.head_dim = o.head_dim;
  c.global_head_dim = o.global_head_dim;
  c.num_global_kv_heads = 1;
  c.attention_k_eq_v = true;
  c.sliding_window = 32;
  c.layer_types.clear();
  for (int i = 0; i < o.layers; ++i) {
    c.layer_types.push_back(i % 2 == 1 || i + 1 == o.layers
                                ? LayerType::kFull
                                : LayerType::kSliding);
  }
  c.max_position_embeddings = 1024;
  c.final_logit_softcapping = 30.0;
  c.enable_moe_block = true;
  c.num_experts = o.experts;
  c.top_k_experts = o.top_k;
  c.moe_intermediate_size = o.expert_intermediate;
  c.pad_token_id = tok->special().pad;
  c.bos_token_id = tok->special().bos;
  c.eos_token_ids = {tok->special().eos};
  GEMMA_RETURN_IF_ERROR(ValidateGemma4TextConfig(c, "tiny MoE"));
  nlohmann::json doc = Gemma4TextConfigToJson(c);
  if (o.vision) {
    c.use_bidirectional_attention = "vision";
    nlohmann::json text = Gemma4TextConfigToJson(c);
    text["model_type"] = "gemma4_text";
    doc = nlohmann::json::object();
    doc["model_type"] = "gemma4";
    doc["architectures"] = {"Gemma4ForConditionalGeneration"};
    doc["text_config"] = text;
    doc["vision_config"] = {{"model_type", "gemma4_vision"},
                            {"hidden_size", 32},
                            {"intermediate_size", 64},
                            {"num_hidden_layers", 1},
                            {"num_attention_heads", 2},
                            {"num_key_value_heads", 2},
                            {"head_dim", 16},
                            {"patch_size", 4},
                            {"pooling_kernel_size", 2},
                            {"position_embedding_size", 64},
                            {"standardize", true},
                            {"use_clipped_linears", false},
                            {"rms_norm_eps", 1e-6}};
    doc["image_token_id"] = tok->special().image_placeholder;
    doc["boi_token_id"] = tok->special().image_open;
    doc["eoi_token_id"] = tok->special().image_close;
    doc["tie_word_embeddings"] = true;
  }
  const std::string json = doc.dump(1);
  GEMMA_ASSIGN_OR_RETURN(Gemma4ModelConfig mc,
                         ParseGemma4ModelConfigText(json, "tiny MoE"));
  Gemma4Model model(mc);
  std::map<std::string, at::Tensor> tensors;
  {
    torch::NoGradGuard no_grad;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
    // Gemma 4 norms and scales multiply by their weight directly: around 1.
    auto fill = [&](const std::string& name, at::Tensor t) {
      at::Tensor noise = at::normal(0.0, o.init_std, t.sizes(), gen);
      if (t.dim() <= 1)
        t.copy_(noise + 1.0);
      else
        t.copy_(noise);
      tensors[name] = t.detach().clone();
    };
    for (auto& p : model->named_parameters()) fill(p.key(), p.value());
    for (auto& b : model->named_buffers()) fill(b.key(), b.value());
  }
  GEMMA_ASSIGN_OR_RETURN(auto hf, Gemma4ModelToHf(tensors, mc, dir));
  GEMMA_RETURN_IF_ERROR(MakeDirs(dir));
  SafetensorsWriter writer;
  for (const auto& [name, t] : hf) {
    GEMMA_RETURN_IF_ERROR(AddTensor(writer, name, t.contiguous()));
  }
  GEMMA_RETURN_IF_ERROR(writer.Write(dir + "/model.safetensors"));
  GEMMA_RETURN_IF_ERROR(WriteFileAtomic(dir + "/config.json", json));
  if (o.vision) {
    // The processor's soft-token budget (HF processor_config.json): 70, the
    // smallest HF allows, keeps the rows short.
    GEMMA_RETURN_IF_ERROR(
        WriteFileAtomic(dir + "/processor_config.json",
                        R"({"image_processor": {"max_soft_tokens": 70}})"));
  }
  return CopyFile(tokenizer, absl::StrCat(dir, "/tokenizer.model"));
}

absl::Status WriteTinyGemma4Tokenizer(const std::string& path,
                                      const std::string& corpus) {
  TokenizerTrainOptions t;
  t.input_files = {corpus};
  t.model_path = path;
  t.vocab_size = 512;
  t.extra_user_defined_pieces = {kTurnOpen,   kTurnClose,        kImageOpen,
                                 kImageClose, kImagePlaceholder, "<|channel>",
                                 "<channel|>"};
  return TrainTokenizer(t);
}

absl::Status WriteTinyOcrData(const std::string& dir, int n, uint64_t seed,
                              int image_size) {
  SynthOcrOptions s;
  s.out_dir = dir;
  s.num_examples = n;
  s.seed = seed;
  s.image_size = image_size;
  s.train_tokenizer = true;
  return WriteSyntheticOcrDataset(s);
}

}  // namespace gemma
