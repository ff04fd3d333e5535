#include "model/lora.h"

#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/checkpoint.h"
#include "model/lora_internal.h"
#include "model/safetensors.h"
#include "model/safetensors_torch.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using json = nlohmann::json;

constexpr char kConfigFile[] = "adapter.json";
constexpr char kTensorFile[] = "adapter.safetensors";

// ResolvePeftSpec with the target names checked against `known`.
absl::StatusOr<PeftSettings> Resolve(const gemma::v1::PeftSpec& spec,
                                     const std::vector<std::string>& known,
                                     const std::vector<std::string>& defaults) {
  PeftSettings s;
  s.method = spec.method().empty() ? "lora" : spec.method();
  if (s.method != "lora" && s.method != "dora") {
    return absl::InvalidArgumentError(
        absl::StrCat("peft.method: unknown method '", spec.method(),
                     "' (known: lora, dora)"));
  }
  if (spec.rank() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("peft.rank: must be > 0, got ", spec.rank()));
  }
  s.rank = spec.rank() == 0 ? 8 : spec.rank();
  if (spec.alpha() < 0 || !std::isfinite(spec.alpha())) {
    return absl::InvalidArgumentError(
        absl::StrCat("peft.alpha: must be > 0, got ", spec.alpha()));
  }
  s.alpha = spec.alpha() == 0 ? static_cast<double>(s.rank) : spec.alpha();
  if (!(spec.dropout() >= 0 && spec.dropout() < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("peft.dropout: must be in [0, 1), got ", spec.dropout()));
  }
  s.dropout = spec.dropout();
  std::set<std::string> targets;
  for (int i = 0; i < spec.target_modules_size(); ++i) {
    const std::string& t = spec.target_modules(i);
    if (std::find(known.begin(), known.end(), t) == known.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("peft.target_modules[", i, "]: unknown target '", t,
                       "' (known: ", absl::StrJoin(known, ", "), ")"));
    }
    targets.insert(t);
  }
  if (targets.empty()) targets.insert(defaults.begin(), defaults.end());
  s.targets.assign(targets.begin(), targets.end());
  return s;
}

}  // namespace

// ---- settings -------------------------------------------------------------
absl::StatusOr<PeftSettings> ResolvePeftSpec(const gemma::v1::PeftSpec& spec,
                                             const AdapterLayout& layout) {
  return Resolve(spec, layout.known_targets, layout.default_targets);
}

absl::StatusOr<PeftSettings> ResolvePeftSpec(const gemma::v1::PeftSpec& spec) {
  return ResolvePeftSpec(spec, Gemma3AdapterLayout(ModelConfig{}));
}

// ---- finding projections --------------------------------------------------
std::vector<TargetProjection> FindProjections(torch::nn::Module& model,
                                              const AdapterLayout& layout) {
  std::vector<TargetProjection> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto proj = std::dynamic_pointer_cast<ProjectionImpl>(item.value());
    if (!proj) continue;
    std::string target = layout.target_of(item.key());
    if (target.empty()) continue;
    out.push_back({item.key(), std::move(target), proj});
  }
  return out;
}

std::shared_ptr<LoraAdapter> AdapterOf(const ProjectionImpl& proj) {
  if (proj.adapter_name() != kLoraSlot) return nullptr;
  return std::dynamic_pointer_cast<LoraAdapter>(proj.adapter());
}

std::vector<int64_t> WholeShape(const ProjectionImpl& proj) {
  if (!proj.tp_split.split()) return proj.weight.sizes().vec();
  return {proj.tp_split.out, proj.tp_split.in};
}

WholeAdapter GatherAdapter(const ProjectionImpl& proj,
                           const LoraAdapter& adapter) {
  const ProjectionSplit& split = proj.tp_split;
  const bool column = split.kind == ProjectionSplit::Kind::kColumn;
  const bool row = split.kind == ProjectionSplit::Kind::kRow;
  auto cpu = [](const torch::Tensor& t) {
    return t.detach().to(torch::kCPU, torch::kFloat32).clone();
  };
  WholeAdapter w;
  w.a = row ? GatherSplit(split, adapter.a, 1).to(torch::kFloat32)
            : cpu(adapter.a);
  w.b = column ? GatherSplit(split, adapter.b, 0).to(torch::kFloat32)
               : cpu(adapter.b);
  if (auto dora = dynamic_cast<const DoraAdapter*>(&adapter)) {
    // Split like B: by rows on column-parallel shards, whole on row-parallel.
    w.m = column ? GatherSplit(split, dora->m, 0).to(torch::kFloat32)
                 : cpu(dora->m);
  }
  return w;
}

bool WritesAdapterFiles(torch::nn::Module& model, const AdapterLayout& layout) {
  for (const auto& p : FindProjections(model, layout)) {
    if (p.proj->tp_split.split()) return p.proj->tp_split.rank() == 0;
  }
  return true;
}

int64_t AdapterCheckpointBytes(torch::nn::Module& model,
                               const AdapterLayout& layout) {
  int64_t elements = 0;
  for (const auto& p : FindProjections(model, layout)) {
    auto adapter = AdapterOf(*p.proj);
    if (!adapter) continue;
    const std::vector<int64_t> shape = WholeShape(*p.proj);
    elements += adapter->rank * (shape[0] + shape[1]);
    if (std::dynamic_pointer_cast<DoraAdapter>(adapter)) elements += shape[0];
  }
  return elements * static_cast<int64_t>(sizeof(float));
}

absl::Status AttachAdapters(torch::nn::Module& model,
                            const AdapterLayout& layout,
                            const gemma::v1::PeftSpec& spec) {
  GEMMA_ASSIGN_OR_RETURN(PeftSettings s, ResolvePeftSpec(spec, layout));
  const std::set<std::string> wanted(s.targets.begin(), s.targets.end());
  if (!layout.has_vision) {
    for (const auto& t : s.targets) {
      if (absl::StartsWith(t, "vision.")) {
        return absl::InvalidArgumentError(
            absl::StrCat("peft.target_modules: '", t,
                         "' needs a vision tower, but the model is text-only"));
      }
    }
  }
  const std::vector<TargetProjection> projections =
      FindProjections(model, layout);
  try {
    int attached = 0;
    for (const auto& p : projections) {
      if (!wanted.count(p.target)) {
        if (AdapterOf(*p.proj)) p.proj->SetAdapter(kLoraSlot, nullptr);
        continue;
      }
      const torch::Tensor& w = p.proj->weight;
      std::shared_ptr<LoraAdapter> adapter;
      if (s.method == "dora") {
        adapter = std::make_shared<DoraAdapter>(w, s.rank, s.alpha, s.dropout,
                                                p.proj->tp_split);
      } else {
        adapter = std::make_shared<LoraAdapter>(
            w.size(1), w.size(0), s.rank, s.alpha, s.dropout, p.proj->tp_split);
      }
      adapter->to(w.device(), w.scalar_type());
      adapter->train(model.is_training());
      p.proj->SetAdapter(kLoraSlot, adapter);
      ++attached;
    }
    if (attached == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("peft.target_modules: [", absl::StrJoin(s.targets, ", "),
                       "] match no projection of the model"));
    }
    for (auto& p : model.parameters()) p.requires_grad_(false);
    for (auto& [name, t] : AdapterParameters(model)) t.requires_grad_(true);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("attaching adapters: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

std::vector<std::pair<std::string, torch::Tensor>> AdapterParameters(
    torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  const std::string infix = absl::StrCat(".", kLoraSlot, ".");
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (absl::StrContains(item.key(), infix)) {
      out.emplace_back(item.key(), item.value());
    }
  }
  return out;
}

// ---- merge ------------------------------------------------------------------
absl::Status MergeAdapters(torch::nn::Module& model,
                           const AdapterLayout& layout) {
  try {
    torch::NoGradGuard no_grad;
    for (auto& p : FindProjections(model, layout)) {
      auto adapter = AdapterOf(*p.proj);
      if (!adapter) continue;
      p.proj->weight.copy_(adapter->MergedWeight(p.proj->weight.detach()));
      p.proj->SetAdapter(kLoraSlot, nullptr);
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("merging adapters: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

// ---- adapter checkpoints
// -----------------------------------------------------
absl::Status ReplaceDir(const std::string& tmp, const std::string& dir) {
  std::string old;
  if (PathExists(dir)) {
    old = absl::StrCat(dir, ".old.", getpid());
    GEMMA_RETURN_IF_ERROR(RemoveTree(old));
    if (std::rename(dir.c_str(), old.c_str()) != 0) {
      return absl::InternalError(
          absl::StrCat(dir, ": cannot move the old folder aside"));
    }
  }
  if (std::rename(tmp.c_str(), dir.c_str()) != 0) {
    if (!old.empty()) std::rename(old.c_str(), dir.c_str());
    return absl::InternalError(
        absl::StrCat(dir, ": cannot rename ", tmp, " to it"));
  }
  if (!old.empty()) GEMMA_RETURN_IF_ERROR(RemoveTree(old));
  return absl::OkStatus();
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  f.close();
  if (!f) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

absl::Status SaveAdapterCheckpoint(const std::string& dir,
                                   torch::nn::Module& model,
                                   const AdapterLayout& layout,
                                   const gemma::v1::PeftSpec& spec,
                                   const std::string& base_model,
                                   int64_t step) {
  GEMMA_ASSIGN_OR_RETURN(PeftSettings s, ResolvePeftSpec(spec, layout));
  // Every TP rank gathers (collective); TP rank 0 writes.
  json projections = json::object();
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  try {
    for (auto& p : FindProjections(model, layout)) {
      auto adapter = AdapterOf(*p.proj);
      if (!adapter) continue;
      projections[p.name] = {{"base_shape", WholeShape(*p.proj)}};
      WholeAdapter w = GatherAdapter(*p.proj, *adapter);
      const std::string prefix = absl::StrCat(p.name, ".", kLoraSlot, ".");
      tensors.emplace_back(prefix + "a", w.a.contiguous());
      tensors.emplace_back(prefix + "b", w.b.contiguous());
      if (w.m.defined()) tensors.emplace_back(prefix + "m", w.m.contiguous());
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(dir, ": ", e.what_without_backtrace()));
  }
  if (projections.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, ": the model has no adapters attached"));
  }
  if (!WritesAdapterFiles(model, layout)) return absl::OkStatus();
  const std::string tmp = absl::StrCat(dir, ".tmp.", getpid());
  GEMMA_RETURN_IF_ERROR(RemoveTree(tmp));
  GEMMA_RETURN_IF_ERROR(MakeDirs(tmp));
  absl::Status st = [&]() -> absl::Status {
    json doc;
    doc["format"] = "gemma-adapter";
    doc["version"] = 1;
    doc["peft"] = {{"method", s.method},
                   {"rank", s.rank},
                   {"alpha", s.alpha},
                   {"dropout", s.dropout},
                   {"target_modules", s.targets}};
    doc["base_model"] = base_model;
    doc["step"] = step;
    SafetensorsWriter writer;
    for (const auto& [name, t] : tensors) {
      GEMMA_RETURN_IF_ERROR(AddTensor(writer, name, t));
    }
    doc["projections"] = projections;
    GEMMA_RETURN_IF_ERROR(writer.Write(absl::StrCat(tmp, "/", kTensorFile)));
    GEMMA_RETURN_IF_ERROR(
        WriteTextFile(absl::StrCat(tmp, "/", kConfigFile), doc.dump(1)));
    return ReplaceDir(tmp, dir);
  }();
  if (!st.ok()) RemoveTree(tmp).IgnoreError();
  return st;
}

absl::StatusOr<AdapterCheckpointInfo> ReadAdapterCheckpointInfo(
    const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/", kConfigFile);
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot open (not an adapter checkpoint?)"));
  }
  std::stringstream ss;
  ss << f.rdbuf();
  json doc;
  try {
    doc = json::parse(ss.str());
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not valid JSON: ", e.what()));
  }
  auto bad = [&](const std::string& field, const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", field, ": ", why));
  };
  if (!doc.is_object() || doc.value("format", "") != "gemma-adapter") {
    return bad("format", "expected \"gemma-adapter\"");
  }
  if (!doc.contains("peft") || !doc["peft"].is_object()) {
    return bad("peft", "missing or not an object");
  }
  const json& p = doc["peft"];
  AdapterCheckpointInfo info;
  try {
    if (!p.contains("rank") || !p["rank"].is_number_integer()) {
      return bad("peft.rank", "missing or not an integer");
    }
    info.spec.set_rank(p["rank"].get<int32_t>());
    if (!p.contains("alpha") || !p["alpha"].is_number()) {
      return bad("peft.alpha", "missing or not a number");
    }
    info.spec.set_alpha(p["alpha"].get<double>());
    info.spec.set_dropout(p.value("dropout", 0.0));
    info.spec.set_method(p.value("method", std::string("lora")));
    if (!p.contains("target_modules") || !p["target_modules"].is_array()) {
      return bad("peft.target_modules", "missing or not a list");
    }
    for (const auto& t : p["target_modules"]) {
      if (!t.is_string()) return bad("peft.target_modules", "not a string");
      info.spec.add_target_modules(t.get<std::string>());
    }
    info.base_model = doc.value("base_model", std::string());
    info.step = doc.value("step", int64_t{0});
  } catch (const json::exception& e) {
    return bad("peft", e.what());
  }
  const std::vector<std::string> all_targets = AllAdapterTargetNames();
  absl::StatusOr<PeftSettings> s = Resolve(info.spec, all_targets, {});
  if (!s.ok()) return bad("peft", std::string(s.status().message()));
  return info;
}

absl::StatusOr<AdapterCheckpointInfo> LoadAdapterCheckpoint(
    const std::string& dir, torch::nn::Module& model,
    const AdapterLayout& layout) {
  GEMMA_ASSIGN_OR_RETURN(AdapterCheckpointInfo info,
                         ReadAdapterCheckpointInfo(dir));
  const std::string cfg_path = absl::StrCat(dir, "/", kConfigFile);
  const std::string st_path = absl::StrCat(dir, "/", kTensorFile);
  json doc;
  try {
    doc = json::parse(std::ifstream(cfg_path, std::ios::binary));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(cfg_path, ": not valid JSON: ", e.what()));
  }
  if (!doc.contains("projections") || !doc["projections"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(cfg_path, ": projections: missing or not an object"));
  }
  // The base model must be the one the adapters were trained on (shapes).
  std::map<std::string, std::vector<int64_t>> have;
  for (auto& p : FindProjections(model, layout)) {
    have[p.name] = WholeShape(*p.proj);
  }
  for (const auto& [name, entry] : doc["projections"].items()) {
    auto it = have.find(name);
    if (it == have.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          cfg_path, ": projections.", name,
          ": the model has no such projection (a different base model?)"));
    }
    std::vector<int64_t> shape;
    try {
      shape = entry.at("base_shape").get<std::vector<int64_t>>();
    } catch (const json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(
          cfg_path, ": projections.", name, ".base_shape: ", e.what()));
    }
    if (shape != it->second) {
      return absl::FailedPreconditionError(absl::StrCat(
          cfg_path, ": projections.", name, ".base_shape: [",
          absl::StrJoin(shape, ", "), "] but the model's weight is [",
          absl::StrJoin(it->second, ", "),
          "] (adapters trained on a different base model)"));
    }
  }
  std::map<std::string, bool> grads;
  for (const auto& item : model.named_parameters()) {
    grads[item.key()] = item.value().requires_grad();
  }
  GEMMA_RETURN_IF_ERROR(AttachAdapters(model, layout, info.spec));
  absl::Status st = LoadAdapterValues(dir, model, layout);
  if (!st.ok()) {
    for (auto& p : FindProjections(model, layout)) {
      if (AdapterOf(*p.proj)) p.proj->SetAdapter(kLoraSlot, nullptr);
    }
    for (auto& item : model.named_parameters()) {
      auto it = grads.find(item.key());
      if (it != grads.end()) item.value().requires_grad_(it->second);
    }
    return st;
  }
  return info;
}

absl::Status LoadAdapterValues(const std::string& dir, torch::nn::Module& model,
                               const AdapterLayout& layout) {
  const std::string st_path = absl::StrCat(dir, "/", kTensorFile);
  GEMMA_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(st_path));
  // The adapters' parameters with the whole (TP = 1) shape each must have in
  // the file and how to take this rank's shard of it.
  struct Target {
    torch::Tensor param;
    std::vector<int64_t> whole;
    const ProjectionSplit* split = nullptr;
    int64_t dim = 0;  // the split dimension; -1: not split
  };
  std::map<std::string, Target> targets;
  const std::vector<TargetProjection> projections =
      FindProjections(model, layout);
  for (const auto& p : projections) {
    auto adapter = AdapterOf(*p.proj);
    if (!adapter) continue;
    const ProjectionSplit& split = p.proj->tp_split;
    const std::vector<int64_t> shape = WholeShape(*p.proj);
    const int64_t r = adapter->rank;
    const bool column = split.kind == ProjectionSplit::Kind::kColumn;
    const bool row = split.kind == ProjectionSplit::Kind::kRow;
    const std::string prefix = absl::StrCat(p.name, ".", kLoraSlot, ".");
    targets[prefix + "a"] = {adapter->a, {r, shape[1]}, &split, row ? 1 : -1};
    targets[prefix + "b"] = {
        adapter->b, {shape[0], r}, &split, column ? 0 : -1};
    if (auto dora = std::dynamic_pointer_cast<DoraAdapter>(adapter)) {
      targets[prefix + "m"] = {dora->m, {shape[0]}, &split, column ? 0 : -1};
    }
  }
  for (const auto& t : file->tensors()) {
    if (!targets.count(t.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(st_path, ": tensor '", t.name,
                       "' is no adapter parameter of the model"));
    }
  }
  try {
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : targets) {
      GEMMA_ASSIGN_OR_RETURN(at::Tensor v, TensorView(file, name));
      if (v.sizes().vec() != t.whole) {
        return absl::InvalidArgumentError(
            absl::StrCat(st_path, ": tensor '", name, "': shape [",
                         absl::StrJoin(v.sizes(), ", "), "], expected [",
                         absl::StrJoin(t.whole, ", "), "]"));
      }
      t.param.copy_(t.dim < 0 ? v : ShardOf(*t.split, v, t.dim));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(st_path, ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

// ---- per-model overloads
// ------------------------------------------------------
absl::Status AttachAdapters(Gemma3Model& model,
                            const gemma::v1::PeftSpec& spec) {
  return AttachAdapters(*model, Gemma3AdapterLayout(model->config()), spec);
}
absl::Status AttachAdapters(Gemma4Model& model,
                            const gemma::v1::PeftSpec& spec) {
  return AttachAdapters(*model, Gemma4AdapterLayout(model->config()), spec);
}
std::vector<std::pair<std::string, torch::Tensor>> AdapterParameters(
    Gemma3Model& model) {
  return AdapterParameters(*model);
}
std::vector<std::pair<std::string, torch::Tensor>> AdapterParameters(
    Gemma4Model& model) {
  return AdapterParameters(*model);
}
absl::Status SaveAdapterCheckpoint(const std::string& dir, Gemma3Model& model,
                                   const gemma::v1::PeftSpec& spec,
                                   const std::string& base_model,
                                   int64_t step) {
  return SaveAdapterCheckpoint(dir, *model,
                               Gemma3AdapterLayout(model->config()), spec,
                               base_model, step);
}
absl::Status SaveAdapterCheckpoint(const std::string& dir, Gemma4Model& model,
                                   const gemma::v1::PeftSpec& spec,
                                   const std::string& base_model,
                                   int64_t step) {
  return SaveAdapterCheckpoint(dir, *model,
                               Gemma4AdapterLayout(model->config()), spec,
                               base_model, step);
}
absl::StatusOr<AdapterCheckpointInfo> LoadAdapterCheckpoint(
    const std::string& dir, Gemma3Model& model) {
  return LoadAdapterCheckpoint(dir, *model,
                               Gemma3AdapterLayout(model->config()));
}
absl::StatusOr<AdapterCheckpointInfo> LoadAdapterCheckpoint(
    const std::string& dir, Gemma4Model& model) {
  return LoadAdapterCheckpoint(dir, *model,
                               Gemma4AdapterLayout(model->config()));
}
absl::Status MergeAdapters(Gemma3Model& model) {
  return MergeAdapters(*model, Gemma3AdapterLayout(model->config()));
}
absl::Status MergeAdapters(Gemma4Model& model) {
  return MergeAdapters(*model, Gemma4AdapterLayout(model->config()));
}

}  // namespace gemma
