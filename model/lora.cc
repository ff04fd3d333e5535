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

constexpr const char* kKnownTargets[] = {"qkv",        "o",          "gate_up",
                                         "down",       "vision.qkv", "vision.o",
                                         "vision.fc1", "vision.fc2"};
constexpr char kConfigFile[] = "adapter.json";
constexpr char kTensorFile[] = "adapter.safetensors";

bool KnownTarget(const std::string& t) {
  for (const char* k : kKnownTargets) {
    if (t == k) return true;
  }
  return false;
}

}  // namespace

// ---- settings -------------------------------------------------------------
absl::StatusOr<PeftSettings> ResolvePeftSpec(const gemma::v1::PeftSpec& spec) {
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
    if (!KnownTarget(t)) {
      return absl::InvalidArgumentError(
          absl::StrCat("peft.target_modules[", i, "]: unknown target '", t,
                       "' (known: ", absl::StrJoin(kKnownTargets, ", "), ")"));
    }
    targets.insert(t);
  }
  if (targets.empty()) targets = {"qkv", "o", "gate_up", "down"};
  s.targets.assign(targets.begin(), targets.end());
  return s;
}

// ---- finding projections --------------------------------------------------
std::vector<TargetProjection> FindProjections(Gemma3Model& model) {
  std::vector<TargetProjection> out;
  for (const auto& item : model->named_modules()) {
    auto proj = std::dynamic_pointer_cast<ProjectionImpl>(item.value());
    if (!proj) continue;
    const std::string& name = item.key();
    std::string target;
    const bool text = absl::StartsWith(name, "text.layers.");
    const bool vision = absl::StartsWith(name, "vision.layers.");
    if (!text && !vision) continue;
    if (absl::EndsWith(name, ".attn.qkv")) {
      target = "qkv";
    } else if (absl::EndsWith(name, ".attn.o")) {
      target = "o";
    } else if (text && absl::EndsWith(name, ".mlp.gate_up")) {
      target = "gate_up";
    } else if (text && absl::EndsWith(name, ".mlp.down")) {
      target = "down";
    } else if (vision && absl::EndsWith(name, ".mlp.fc1")) {
      target = "fc1";
    } else if (vision && absl::EndsWith(name, ".mlp.fc2")) {
      target = "fc2";
    } else {
      continue;
    }
    if (vision) target = "vision." + target;
    out.push_back({name, target, proj});
  }
  return out;
}

std::shared_ptr<LoraAdapter> AdapterOf(const ProjectionImpl& proj) {
  if (proj.adapter_name() != kLoraSlot) return nullptr;
  return std::dynamic_pointer_cast<LoraAdapter>(proj.adapter());
}

absl::Status AttachAdapters(Gemma3Model& model,
                            const gemma::v1::PeftSpec& spec) {
  GEMMA_ASSIGN_OR_RETURN(PeftSettings s, ResolvePeftSpec(spec));
  const std::set<std::string> wanted(s.targets.begin(), s.targets.end());
  if (!model->config().is_vl()) {
    for (const auto& t : s.targets) {
      if (absl::StartsWith(t, "vision.")) {
        return absl::InvalidArgumentError(
            absl::StrCat("peft.target_modules: '", t,
                         "' needs a vision tower, but the model is text-only"));
      }
    }
  }
  try {
    int attached = 0;
    for (auto& p : FindProjections(model)) {
      if (!wanted.count(p.target)) {
        if (AdapterOf(*p.proj)) p.proj->SetAdapter(kLoraSlot, nullptr);
        continue;
      }
      const torch::Tensor& w = p.proj->weight;
      std::shared_ptr<LoraAdapter> adapter;
      if (s.method == "dora") {
        adapter = std::make_shared<DoraAdapter>(w, s.rank, s.alpha, s.dropout);
      } else {
        adapter = std::make_shared<LoraAdapter>(w.size(1), w.size(0), s.rank,
                                                s.alpha, s.dropout);
      }
      adapter->to(w.device(), w.scalar_type());
      adapter->train(model->is_training());
      p.proj->SetAdapter(kLoraSlot, adapter);
      ++attached;
    }
    if (attached == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("peft.target_modules: [", absl::StrJoin(s.targets, ", "),
                       "] match no projection of the model"));
    }
    for (auto& p : model->parameters()) p.requires_grad_(false);
    for (auto& [name, t] : AdapterParameters(model)) t.requires_grad_(true);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("attaching adapters: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

std::vector<std::pair<std::string, torch::Tensor>> AdapterParameters(
    Gemma3Model& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  const std::string infix = absl::StrCat(".", kLoraSlot, ".");
  for (const auto& item : model->named_parameters(/*recurse=*/true)) {
    if (absl::StrContains(item.key(), infix)) {
      out.emplace_back(item.key(), item.value());
    }
  }
  return out;
}

// ---- merge ------------------------------------------------------------------
absl::Status MergeAdapters(Gemma3Model& model) {
  try {
    torch::NoGradGuard no_grad;
    for (auto& p : FindProjections(model)) {
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

absl::Status SaveAdapterCheckpoint(const std::string& dir, Gemma3Model& model,
                                   const gemma::v1::PeftSpec& spec,
                                   const std::string& base_model,
                                   int64_t step) {
  GEMMA_ASSIGN_OR_RETURN(PeftSettings s, ResolvePeftSpec(spec));
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
    json projections = json::object();
    std::vector<torch::Tensor> keep;
    SafetensorsWriter writer;
    try {
      for (auto& p : FindProjections(model)) {
        if (!AdapterOf(*p.proj)) continue;
        projections[p.name] = {{"base_shape", p.proj->weight.sizes().vec()}};
      }
      for (auto& [name, t] : AdapterParameters(model)) {
        keep.push_back(
            t.detach().to(torch::kCPU, torch::kFloat32).contiguous());
        GEMMA_RETURN_IF_ERROR(AddTensor(writer, name, keep.back()));
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat(dir, ": ", e.what_without_backtrace()));
    }
    if (projections.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir, ": the model has no adapters attached"));
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
  absl::StatusOr<PeftSettings> s = ResolvePeftSpec(info.spec);
  if (!s.ok()) return bad("peft", std::string(s.status().message()));
  return info;
}

absl::StatusOr<AdapterCheckpointInfo> LoadAdapterCheckpoint(
    const std::string& dir, Gemma3Model& model) {
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
  for (auto& p : FindProjections(model)) {
    have[p.name] = p.proj->weight.sizes().vec();
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
  GEMMA_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(st_path));
  std::map<std::string, bool> grads;
  for (const auto& item : model->named_parameters()) {
    grads[item.key()] = item.value().requires_grad();
  }
  GEMMA_RETURN_IF_ERROR(AttachAdapters(model, info.spec));
  absl::Status st = [&]() -> absl::Status {
    auto params = AdapterParameters(model);
    std::set<std::string> expected;
    for (auto& [name, t] : params) expected.insert(name);
    for (const auto& t : file->tensors()) {
      if (!expected.count(t.name)) {
        return absl::InvalidArgumentError(
            absl::StrCat(st_path, ": tensor '", t.name,
                         "' is no adapter parameter of the model"));
      }
    }
    try {
      torch::NoGradGuard no_grad;
      for (auto& [name, t] : params) {
        GEMMA_ASSIGN_OR_RETURN(at::Tensor v, TensorView(file, name));
        if (v.sizes() != t.sizes()) {
          return absl::InvalidArgumentError(
              absl::StrCat(st_path, ": tensor '", name, "': shape [",
                           absl::StrJoin(v.sizes(), ", "), "], expected [",
                           absl::StrJoin(t.sizes(), ", "), "]"));
        }
        t.copy_(v);
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat(st_path, ": ", e.what_without_backtrace()));
    }
    return absl::OkStatus();
  }();
  if (!st.ok()) {
    for (auto& p : FindProjections(model)) {
      if (AdapterOf(*p.proj)) p.proj->SetAdapter(kLoraSlot, nullptr);
    }
    for (auto& item : model->named_parameters()) {
      auto it = grads.find(item.key());
      if (it != grads.end()) item.value().requires_grad_(it->second);
    }
    return st;
  }
  return info;
}

}  // namespace gemma
