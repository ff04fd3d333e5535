// ExportPeftAdapter (model/lora.h): our fused adapters -> an HF PEFT folder.
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "model/checkpoint.h"
#include "model/lora.h"
#include "model/lora_internal.h"
#include "model/safetensors.h"
#include "model/safetensors_torch.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using json = nlohmann::json;

// The peft version whose adapter format we write.
constexpr char kPeftFormatVersion[] = "0.21.2";

// "model.language_model.layers.3.self_attn.q_proj" ->
// "model\.language_model\.layers\.\d+\.self_attn\.q_proj".
std::string LayerPattern(const std::string& module) {
  std::string out;
  size_t i = 0;
  while (i < module.size()) {
    if (module.compare(i, 7, "layers.") == 0 && i + 7 < module.size() &&
        std::isdigit(static_cast<unsigned char>(module[i + 7]))) {
      out += "layers\\.\\d+";
      i += 7;
      while (i < module.size() &&
             std::isdigit(static_cast<unsigned char>(module[i]))) {
        ++i;
      }
      continue;
    }
    if (module[i] == '.') {
      out += "\\.";
    } else {
      out += module[i];
    }
    ++i;
  }
  return out;
}

std::string Leaf(const std::string& module) {
  const size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

}  // namespace

absl::Status ExportPeftAdapter(torch::nn::Module& model,
                               const AdapterLayout& layout,
                               const gemma::v1::PeftSpec& spec,
                               const std::string& out_dir,
                               const std::string& base_model_name_or_path) {
  GEMMA_ASSIGN_OR_RETURN(PeftSettings s, ResolvePeftSpec(spec, layout));
  GEMMA_ASSIGN_OR_RETURN(std::vector<ParamMapping> mapping,
                         layout.hf_projections());
  std::map<std::string, const ParamMapping*> by_name;
  for (const auto& p : mapping) by_name[p.name] = &p;

  // HF module -> its adapter tensors; and which HF modules are adapted.
  std::map<std::string, std::map<std::string, torch::Tensor>> out;
  std::set<std::string> adapted_leaves, plain_leaves;
  std::set<std::string> patterns;
  try {
    torch::NoGradGuard no_grad;
    for (auto& p : FindProjections(model, layout)) {
      auto it = by_name.find(p.name);
      if (it == by_name.end()) {
        return absl::InternalError(
            absl::StrCat(p.name, ".weight: no HF mapping"));
      }
      const ParamMapping& pm = *it->second;
      if (WholeShape(*p.proj) != pm.shape) {
        return absl::FailedPreconditionError(
            absl::StrCat(p.name, ".weight: shape [",
                         absl::StrJoin(WholeShape(*p.proj), ", "),
                         "], the model config implies [",
                         absl::StrJoin(pm.shape, ", "), "]"));
      }
      auto adapter = AdapterOf(*p.proj);
      if (adapter && s.method == "dora" &&
          !std::dynamic_pointer_cast<DoraAdapter>(adapter)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "peft.method: dora, but ", p.name, " holds a LoRA adapter"));
      }
      if (adapter && adapter->rank != s.rank) {
        return absl::InvalidArgumentError(
            absl::StrCat("peft.rank: ", s.rank, ", but ", p.name,
                         " holds a rank-", adapter->rank, " adapter"));
      }
      // Each piece: rows [offset, offset + len) of ours are rows
      // [row_begin, row_end) of HF module `module`.
      std::map<std::string, std::vector<std::tuple<int64_t, int64_t, int64_t>>>
          pieces;  // module -> (row_begin, our offset, rows)
      int64_t offset = 0;
      for (const HfRows& r : pm.pieces) {
        const std::string& module = r.hf_name;
        pieces[module].push_back(
            {r.row_begin, offset, r.row_end - r.row_begin});
        offset += r.row_end - r.row_begin;
        (adapter ? adapted_leaves : plain_leaves).insert(Leaf(module));
        if (adapter) patterns.insert(LayerPattern(module));
      }
      if (!adapter) continue;
      // Whole tensors (gathered over the TP group: collective).
      const WholeAdapter whole = GatherAdapter(*p.proj, *adapter);
      const torch::Tensor& a = whole.a;
      const torch::Tensor& b = whole.b;
      const torch::Tensor& m = whole.m;
      for (auto& [module, list] : pieces) {
        std::sort(list.begin(), list.end());
        std::vector<torch::Tensor> b_rows, m_rows;
        int64_t expect = 0;
        for (const auto& [row_begin, ours, len] : list) {
          if (row_begin != expect) {
            return absl::InternalError(absl::StrCat(
                module, ": HF rows not contiguous in the mapping"));
          }
          b_rows.push_back(b.narrow(0, ours, len));
          if (m.defined()) m_rows.push_back(m.narrow(0, ours, len));
          expect += len;
        }
        auto& t = out[module];
        t["lora_A.weight"] = a.clone().contiguous();
        t["lora_B.weight"] = torch::cat(b_rows, 0).contiguous();
        if (m.defined()) {
          t["lora_magnitude_vector"] = torch::cat(m_rows, 0).contiguous();
        }
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("exporting adapters: ", e.what_without_backtrace()));
  }
  if (out.empty()) {
    return absl::FailedPreconditionError(
        "exporting adapters: the model has no adapters attached");
  }

  // target_modules: leaf names when they select exactly the adapted modules
  // (peft matches a list entry against the name's last components), else one
  // regex that peft full-matches against module names.
  json targets;
  bool leaves_exact = layout.leaf_target_names;
  for (const auto& l : adapted_leaves) {
    if (plain_leaves.count(l)) leaves_exact = false;
  }
  if (leaves_exact) {
    targets =
        std::vector<std::string>(adapted_leaves.begin(), adapted_leaves.end());
  } else {
    targets = absl::StrCat(
        "^(", absl::StrJoin(patterns.begin(), patterns.end(), "|"), ")$");
  }
  json cfg = {
      {"peft_type", "LORA"},
      {"task_type", nullptr},
      {"peft_version", kPeftFormatVersion},
      {"auto_mapping",
       {{"base_model_class", layout.hf_class},
        {"parent_library", layout.hf_parent_library}}},
      {"base_model_name_or_path", base_model_name_or_path.empty()
                                      ? json(nullptr)
                                      : json(base_model_name_or_path)},
      {"revision", nullptr},
      {"inference_mode", true},
      {"r", s.rank},
      {"target_modules", targets},
      {"exclude_modules", nullptr},
      {"lora_alpha", s.alpha == std::floor(s.alpha)
                         ? json(static_cast<int64_t>(s.alpha))
                         : json(s.alpha)},
      {"lora_dropout", s.dropout},
      {"fan_in_fan_out", false},
      {"bias", "none"},
      {"use_rslora", false},
      {"use_dora", s.method == "dora"},
      {"modules_to_save", nullptr},
      {"init_lora_weights", true},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", json::object()},
      {"alpha_pattern", json::object()},
      {"lora_bias", false},
  };

  if (!WritesAdapterFiles(model, layout)) return absl::OkStatus();
  SafetensorsWriter writer;
  for (const auto& [module, tensors] : out) {
    for (const auto& [suffix, t] : tensors) {
      GEMMA_RETURN_IF_ERROR(AddTensor(
          writer, absl::StrCat("base_model.model.", module, ".", suffix), t));
    }
  }
  writer.SetMetadata({{"format", "pt"}});
  const std::string tmp = absl::StrCat(out_dir, ".tmp.", getpid());
  GEMMA_RETURN_IF_ERROR(RemoveTree(tmp));
  GEMMA_RETURN_IF_ERROR(MakeDirs(tmp));
  absl::Status st = [&]() -> absl::Status {
    GEMMA_RETURN_IF_ERROR(
        writer.Write(absl::StrCat(tmp, "/adapter_model.safetensors")));
    GEMMA_RETURN_IF_ERROR(
        WriteTextFile(absl::StrCat(tmp, "/adapter_config.json"), cfg.dump(2)));
    return ReplaceDir(tmp, out_dir);
  }();
  if (!st.ok()) RemoveTree(tmp).IgnoreError();
  return st;
}

absl::Status ExportPeftAdapter(Gemma3Model& model,
                               const gemma::v1::PeftSpec& spec,
                               const std::string& out_dir,
                               const std::string& base_model_name_or_path) {
  return ExportPeftAdapter(*model, Gemma3AdapterLayout(model->config()), spec,
                           out_dir, base_model_name_or_path);
}

absl::Status ExportPeftAdapter(Gemma4Model& model,
                               const gemma::v1::PeftSpec& spec,
                               const std::string& out_dir,
                               const std::string& base_model_name_or_path) {
  return ExportPeftAdapter(*model, Gemma4AdapterLayout(model->config()), spec,
                           out_dir, base_model_name_or_path);
}

}  // namespace gemma
