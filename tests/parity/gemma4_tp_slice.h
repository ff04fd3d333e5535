// Test helper: a rank's tensor-parallel shard of a global Gemma 4 tensor,
// written from the split rules (model/gemma4.h, model/param_table.h)
// independently of the model and checkpoint code, so tests can check both
// against it.
#ifndef GEMMA_TESTS_PARITY_GEMMA4_TP_SLICE_H_
#define GEMMA_TESTS_PARITY_GEMMA4_TP_SLICE_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "model/gemma4_config.h"

namespace gemma {

// Rank `rank`'s TP shard of global tensor `t` (our names), written from the
// split rules independently of model/param_table.cc.
inline torch::Tensor Gemma4TpSlice(const std::string& name,
                                   const torch::Tensor& t,
                                   const Gemma4TextConfig& c, int tp,
                                   int rank) {
  auto ends = [&](const char* s) { return absl::EndsWith(name, s); };
  if (tp == 1 || !absl::StartsWith(name, "text.")) return t;
  if (name == "text.embed.weight") {
    const int64_t per = (t.size(0) + tp - 1) / tp;
    torch::Tensor padded = torch::cat(
        {t, torch::zeros({per * tp - t.size(0), t.size(1)}, t.options())});
    return padded.narrow(0, rank * per, per);
  }
  if (ends("attn.qkv.weight") || ends("attn.qk.weight")) {
    const int64_t layer = std::stoll(name.substr(12, name.find('.', 12) - 12));
    const LayerType type = c.layer_types[static_cast<size_t>(layer)];
    const int64_t nq = c.num_heads, nkv = c.layer_kv_heads(type);
    const int64_t hd = c.layer_head_dim(type);
    const int64_t m = ends("qk.weight") ? 1 : 2;
    if (nkv % tp == 0) {
      const int64_t per = t.size(0) / tp;
      return t.narrow(0, rank * per, per);
    }
    const int64_t share = tp / nkv, g = rank / share, s = rank % share;
    const int64_t group_rows = (nq / nkv + m) * hd, q = nq / tp * hd;
    return torch::cat({t.narrow(0, g * group_rows + s * q, q),
                       t.narrow(0, g * group_rows + nq / nkv * hd, m * hd)});
  }
  if (ends("attn.o.weight") || ends("mlp.down.weight")) {
    const int64_t per = t.size(1) / tp;
    return t.narrow(1, rank * per, per);
  }
  if (ends("mlp.gate_up.weight")) {
    const int64_t block = t.size(0) / 2, per = block / tp;
    return torch::cat({t.narrow(0, rank * per, per),
                       t.narrow(0, block + rank * per, per)});
  }
  return t;
}

}  // namespace gemma

#endif  // GEMMA_TESTS_PARITY_GEMMA4_TP_SLICE_H_
