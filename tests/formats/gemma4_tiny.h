// A tiny random Gemma 4 HF folder written from C++ (no python): config.json
// from a Gemma4TextConfig (text-only, Gemma4ForCausalLM spelling) and one
// model.safetensors holding every tensor BuildGemma4HfMapping lists, filled
// with deterministic pseudo-random finite values. Lets tests pick sizes the
// parity fixture lacks (a vocabulary that TP pads, full layers with a V
// projection and fewer KV heads than tp).
#ifndef GEMMA_TESTS_FORMATS_GEMMA4_TINY_H_
#define GEMMA_TESTS_FORMATS_GEMMA4_TINY_H_

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/gemma4_config.h"
#include "model/gemma4_names.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace gemma::testing {

// nq 4; sliding layers hd 8, full layers hd 16; 4 experts; intermediate 24;
// vocab 509 (prime: TP pads it). With `k_eq_v`: sliding layers nkv 2, full
// layers nkv 1 and K = V (qk). Without: nkv 1 on every layer (HF gives full
// layers num_key_value_heads unless K = V), full layers with V (qkv).
inline Gemma4TextConfig TinyGemma4TextConfig(bool k_eq_v) {
  Gemma4TextConfig c;
  c.vocab_size = 509;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_layers = 4;
  c.num_heads = 4;
  c.num_kv_heads = k_eq_v ? 2 : 1;
  c.head_dim = 8;
  c.global_head_dim = 16;
  c.num_global_kv_heads = 1;
  c.attention_k_eq_v = k_eq_v;
  c.sliding_window = 8;
  c.layer_types = {LayerType::kSliding, LayerType::kFull, LayerType::kSliding,
                   LayerType::kFull};
  c.enable_moe_block = true;
  c.num_experts = 4;
  c.top_k_experts = 2;
  c.moe_intermediate_size = 8;
  c.max_position_embeddings = 64;
  return c;
}

// Writes DIR/config.json and DIR/model.safetensors (BF16) for `c`.
inline absl::Status WriteTinyGemma4Hf(const std::string& dir,
                                      const Gemma4TextConfig& c,
                                      uint32_t seed = 1) {
  std::filesystem::create_directories(dir);
  {
    std::ofstream out(dir + "/config.json");
    out << Gemma4TextConfigToJson(c).dump(2);
    if (!out) return absl::InternalError(dir + "/config.json: write failed");
  }
  Gemma4ModelConfig model;
  model.text = c;
  const HfMapping mapping = BuildGemma4HfMapping(model);
  std::vector<std::vector<uint16_t>> data;
  SafetensorsWriter w;
  w.SetMetadata({{"format", "pt"}});
  uint32_t state = seed * 2654435761u + 12345u;
  for (const HfTensorShape& t : mapping.hf_tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    data.emplace_back(static_cast<size_t>(n));
    for (uint16_t& v : data.back()) {
      state = state * 1664525u + 1013904223u;
      const float f = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      v = static_cast<uint16_t>(bits >> 16);
    }
    absl::Status s =
        w.AddBytes(t.hf_name, DType::kBF16, t.shape,
                   {reinterpret_cast<const uint8_t*>(data.back().data()),
                    static_cast<size_t>(n) * 2});
    if (!s.ok()) return s;
  }
  return w.Write(dir + "/model.safetensors");
}

}  // namespace gemma::testing

#endif  // GEMMA_TESTS_FORMATS_GEMMA4_TINY_H_
