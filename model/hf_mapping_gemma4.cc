#include "model/hf_mapping_gemma4.h"

#include <torch/torch.h>

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_io.h"
#include "common/status_macros.h"
#include "model/checkpoint.h"
#include "model/gemma4.h"
#include "model/gemma4_names.h"
#include "model/safetensors.h"
#include "model/safetensors_torch.h"

namespace gemma {
namespace {

constexpr const char* kSkippedPrefixes[] = {
    "model.vision_tower.",   "model.embed_vision.", "model.audio_tower.",
    "model.embed_audio.",    "vision_tower.",       "embed_vision.",
    "multi_modal_projector."};

// The HF name without its prefix, "" for a key the text model drops or skips.
absl::StatusOr<std::string> StripPrefix(const std::string& key) {
  if (key == "lm_head.weight" || key == "language_model.lm_head.weight") {
    return std::string();
  }
  for (const char* p : kSkippedPrefixes) {
    if (absl::StartsWith(key, p)) return std::string();
  }
  for (const char* p :
       {"model.language_model.", "language_model.model.", "model."}) {
    if (absl::StartsWith(key, p)) return key.substr(std::string(p).size());
  }
  return absl::NotFoundError(key);
}

std::string Shape(at::IntArrayRef s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

}  // namespace

absl::StatusOr<std::map<std::string, at::Tensor>> Gemma4FromHf(
    const std::map<std::string, at::Tensor>& hf, const Gemma4TextConfig& config,
    const std::string& source) {
  std::map<std::string, at::Tensor> bare;
  for (const auto& [key, t] : hf) {
    auto name = StripPrefix(key);
    if (!name.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", key, "' is not part of a Gemma 4 checkpoint"));
    }
    if (name->empty()) continue;
    if (!bare.emplace(*name, t).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", key, "' appears under two prefixes"));
    }
  }
  std::set<std::string> used;
  std::map<std::string, at::Tensor> out;
  for (const ParamMapping& m : BuildGemma4Mapping(config)) {
    std::vector<at::Tensor> parts;
    for (const HfRows& p : m.pieces) {
      auto it = bare.find(p.hf_name);
      if (it == bare.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": tensor '", p.hf_name,
                         "' missing (needed for ", m.name, ")"));
      }
      used.insert(p.hf_name);
      const at::Tensor& t = it->second;
      if (t.dim() == 0 || t.size(0) < p.row_end) {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": tensor '", p.hf_name, "' has shape ", Shape(t.sizes()),
            ", too small for rows [", p.row_begin, ", ", p.row_end, ")"));
      }
      parts.push_back(t.narrow(0, p.row_begin, p.row_end - p.row_begin));
    }
    at::Tensor fused =
        parts.size() == 1 ? parts[0].contiguous() : torch::cat(parts, 0);
    if (fused.sizes().vec() != m.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": ", m.pieces[0].hf_name, " gives ", m.name, " shape ",
          Shape(fused.sizes()), ", the config implies ", Shape(m.shape)));
    }
    out.emplace(m.name, fused);
  }
  for (const auto& [name, t] : bare) {
    if (!used.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", name,
          "' is not used by this config (e.g. a "
          "v_proj on a K=V layer, or a layer beyond num_hidden_layers)"));
    }
  }
  return out;
}

absl::StatusOr<std::map<std::string, at::Tensor>> Gemma4ToHf(
    const std::map<std::string, at::Tensor>& ours,
    const Gemma4TextConfig& config, const std::string& source) {
  // Every HF tensor's total rows, from the pieces that cover it.
  std::map<std::string, std::vector<std::pair<int64_t, at::Tensor>>> rows;
  for (const ParamMapping& m : BuildGemma4Mapping(config)) {
    auto it = ours.find(m.name);
    if (it == ours.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tensor '", m.name, "' missing"));
    }
    const at::Tensor& t = it->second;
    if (t.sizes().vec() != m.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", m.name, "' has shape ", Shape(t.sizes()),
          ", the config implies ", Shape(m.shape)));
    }
    int64_t at_row = 0;
    for (const HfRows& p : m.pieces) {
      const int64_t n = p.row_end - p.row_begin;
      rows[p.hf_name].emplace_back(p.row_begin, t.narrow(0, at_row, n));
      at_row += n;
    }
  }
  std::map<std::string, at::Tensor> out;
  for (auto& [name, pieces] : rows) {
    std::sort(pieces.begin(), pieces.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<at::Tensor> parts;
    for (auto& p : pieces) parts.push_back(p.second);
    out.emplace("model." + name, parts.size() == 1 ? parts[0].contiguous()
                                                   : torch::cat(parts, 0));
  }
  for (const auto& [name, t] : ours) {
    if (!absl::StartsWith(name, "text.")) continue;
    bool known = false;
    for (const ParamMapping& m : BuildGemma4Mapping(config))
      known |= m.name == name;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", name, "' is not a Gemma 4 parameter"));
    }
  }
  return out;
}

absl::StatusOr<std::map<std::string, at::Tensor>> ReadSafetensorsFolder(
    const std::string& dir) {
  const std::vector<std::string> files =
      ListFilesWithSuffix(dir, ".safetensors");
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat(dir, ": no *.safetensors files"));
  }
  std::map<std::string, at::Tensor> raw;
  for (const auto& path : files) {
    GEMMA_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
    for (const auto& info : file->tensors()) {
      GEMMA_ASSIGN_OR_RETURN(at::Tensor view, TensorView(file, info.name));
      if (!raw.emplace(info.name, view.clone()).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": tensor '", info.name, "' also in another file"));
      }
    }
  }
  return raw;
}

absl::StatusOr<Gemma4Weights> LoadGemma4Folder(const std::string& dir) {
  Gemma4Weights w;
  GEMMA_ASSIGN_OR_RETURN(w.config_json, ReadFileToString(dir + "/config.json"));
  GEMMA_ASSIGN_OR_RETURN(
      w.config, ParseGemma4TextConfigText(w.config_json, dir + "/config.json"));
  GEMMA_ASSIGN_OR_RETURN(auto raw, ReadSafetensorsFolder(dir));
  bool ours = true;
  for (const auto& [name, t] : raw) ours &= absl::StartsWith(name, "text.");
  if (ours) {
    w.kind = "ours";
    w.tensors = std::move(raw);
    // Shapes are checked against the config through the mapping.
    GEMMA_ASSIGN_OR_RETURN(auto hf, Gemma4ToHf(w.tensors, w.config, dir));
    (void)hf;
    return w;
  }
  w.kind = "hf";
  GEMMA_ASSIGN_OR_RETURN(w.tensors, Gemma4FromHf(raw, w.config, dir));
  return w;
}

absl::Status SaveGemma4Folder(const std::string& dir,
                              const std::string& config_json,
                              const Gemma4TextConfig& config,
                              const std::map<std::string, at::Tensor>& tensors,
                              bool hf) {
  GEMMA_RETURN_IF_ERROR(MakeDirs(dir));
  std::map<std::string, at::Tensor> out;
  if (hf) {
    GEMMA_ASSIGN_OR_RETURN(out, Gemma4ToHf(tensors, config, dir));
  } else {
    for (const auto& [name, t] : tensors) out.emplace(name, t.contiguous());
  }
  SafetensorsWriter writer;
  for (const auto& [name, t] : out) {
    GEMMA_RETURN_IF_ERROR(AddTensor(writer, name, t));
  }
  GEMMA_RETURN_IF_ERROR(writer.Write(dir + "/model.safetensors"));
  return WriteFileAtomic(dir + "/config.json", config_json);
}

absl::StatusOr<Gemma4TextModel> LoadGemma4TextModel(const std::string& dir,
                                                    std::shared_ptr<Comm> ep) {
  GEMMA_ASSIGN_OR_RETURN(Gemma4Weights w, LoadGemma4Folder(dir));
  try {
    Gemma4TextModel model(w.config, ep);
    absl::Status s = LoadGemma4Weights(*model, w.tensors);
    if (!s.ok()) {
      return absl::Status(s.code(),
                          absl::StrCat(dir, " (", w.kind, "): ", s.message()));
    }
    return model;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": building the Gemma 4 model: ", e.what_without_backtrace()));
  }
}

}  // namespace gemma
