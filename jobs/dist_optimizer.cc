#include "jobs/dist_optimizer.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "model/safetensors.h"
#include "model/safetensors_torch.h"

namespace gemma {
namespace {

constexpr char kShardFormat[] = "gemma.zero1.v1";

std::string Key(int b, const char* what) {
  return absl::StrCat("bucket/", b, "/", what);
}

// The first place where `file` and `mine` differ, as "path: file has X, this
// run has Y"; empty when equal.
std::string JsonDiff(const nlohmann::json& file, const nlohmann::json& mine,
                     const std::string& path) {
  if (file.type() == mine.type() && file.is_object()) {
    for (const auto& [k, v] : mine.items()) {
      const std::string p = path.empty() ? k : absl::StrCat(path, ".", k);
      if (!file.contains(k)) return absl::StrCat(p, ": missing in the file");
      std::string d = JsonDiff(file[k], v, p);
      if (!d.empty()) return d;
    }
    return "";
  }
  if (file.type() == mine.type() && file.is_array() &&
      file.size() == mine.size()) {
    for (size_t i = 0; i < mine.size(); ++i) {
      std::string d =
          JsonDiff(file[i], mine[i], absl::StrCat(path, "[", i, "]"));
      if (!d.empty()) return d;
    }
    return "";
  }
  if (file.is_array() && mine.is_array()) {
    return absl::StrCat(path, ": the file has ", file.size(),
                        " entries, this run ", mine.size());
  }
  if (file == mine) return "";
  return absl::StrCat(path, ": the file has ", file.dump(), ", this run has ",
                      mine.dump());
}

}  // namespace

DistOptimizer::DistOptimizer(GradSync& grads, DistOptimizerOptions options)
    : grads_(grads), options_(options), dp_rank_(grads.dp_rank()) {
  TORCH_CHECK(options_.zero_stage == 0 || options_.zero_stage == 1,
              "DistOptimizer: zero_stage must be 0 or 1, got ",
              options_.zero_stage);
  TORCH_CHECK(grads_.options().shard == (options_.zero_stage == 1),
              "DistOptimizer: zero_stage ", options_.zero_stage,
              " needs a GradSync with shard = ", options_.zero_stage == 1);
  torch::NoGradGuard no_grad;
  const BucketLayout& layout = grads_.layout();
  const auto& params = grads_.params();
  const int tp_rank = grads_.groups().tp->rank();
  // The norm's runs: contiguous ranges of counted pieces in the owned
  // segment (with tp = 1, one run per bucket).
  for (size_t b = 0; b < layout.buckets().size(); ++b) {
    const int64_t seg_begin =
        layout.SegmentOffset(static_cast<int>(b), dp_rank_);
    std::vector<Run> runs;
    for (const auto& piece :
         layout.SegmentPieces(static_cast<int>(b), dp_rank_)) {
      const TrainParam& p = params[piece.param];
      if (!p.tp_sharded && tp_rank != 0) continue;
      const int64_t at = piece.buffer_offset - seg_begin;
      auto add = [&](int64_t offset, int64_t numel) {
        if (numel <= 0) return;
        if (!runs.empty() && runs.back().offset + runs.back().numel == offset) {
          runs.back().numel += numel;
        } else {
          runs.push_back(Run{offset, numel});
        }
      };
      // The piece minus the parameter's norm_skip range.
      const int64_t pb = piece.param_offset, pe = pb + piece.numel;
      const int64_t sb = std::clamp(p.norm_skip.first, pb, pe);
      const int64_t se = std::clamp(p.norm_skip.second, sb, pe);
      add(at, sb - pb);
      add(at + (se - pb), pe - se);
    }
    runs_.push_back(std::move(runs));
  }
  if (options_.zero_stage == 0) {
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const TrainParam& p : params) named.emplace_back(p.name, p.param);
    adamw_ = std::make_unique<AdamW>(std::move(named), options_.adamw);
    return;
  }
  // Stage 1: the parameters move into flat buffers like the gradients'.
  param_buffers_ = layout.NewBuffers(params[0].param.device());
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor view =
        layout.SlotView(param_buffers_, i, params[i].param.sizes());
    view.copy_(params[i].param.detach());
    at::Tensor p = params[i].param;
    p.set_data(view);
  }
  for (size_t b = 0; b < layout.buckets().size(); ++b) {
    const auto& bucket = layout.buckets()[b];
    Shard s;
    s.param = param_buffers_[bucket.buffer].narrow(
        0, layout.SegmentOffset(static_cast<int>(b), dp_rank_), bucket.segment);
    s.master = s.param.scalar_type() == at::kFloat
                   ? s.param
                   : s.param.to(at::kFloat).clone();
    s.exp_avg = at::zeros_like(s.master);
    s.exp_avg_sq = at::zeros_like(s.master);
    s.pieces = layout.SegmentPieces(static_cast<int>(b), dp_rank_);
    for (const auto& piece : s.pieces) {
      const TrainParam& p = params[piece.param];
      s.decay.push_back(AdamW::Decays(p.name, p.param));
    }
    shards_.push_back(std::move(s));
  }
}

int64_t DistOptimizer::steps() const {
  return adamw_ ? adamw_->steps() : steps_;
}

at::Tensor DistOptimizer::SegmentGrad(int b) const {
  const BucketLayout& layout = grads_.layout();
  const auto& bucket = layout.buckets()[b];
  return grads_.buffer(bucket.buffer)
      .narrow(0, layout.SegmentOffset(b, dp_rank_), bucket.segment);
}

double DistOptimizer::GradSquaredNorm() {
  torch::NoGradGuard no_grad;
  const ParallelGroups& groups = grads_.groups();
  std::vector<at::Tensor> squares;
  for (size_t b = 0; b < runs_.size(); ++b) {
    at::Tensor seg = SegmentGrad(static_cast<int>(b));
    for (const Run& r : runs_[b]) {
      squares.push_back(seg.narrow(0, r.offset, r.numel)
                            .to(at::kFloat)
                            .square()
                            .sum(at::kDouble));
    }
  }
  const at::Device device = grads_.buffer(0).device();
  at::Tensor total =
      squares.empty()
          ? at::zeros({1},
                      at::TensorOptions().dtype(at::kDouble).device(device))
          : at::stack(squares).sum().reshape({1});
  groups.dp->AllReduceSum(total);
  groups.tp->AllReduceSum(total);
  return total.item<double>();
}

void DistOptimizer::ScaleGrads(double coef) {
  torch::NoGradGuard no_grad;
  const at::Device device = grads_.buffer(0).device();
  at::Tensor c = at::scalar_tensor(
      coef, at::TensorOptions().dtype(at::kFloat).device(device));
  for (size_t b = 0; b < runs_.size(); ++b)
    grads_.ReducedGrad(static_cast<int>(b)).mul_(c);
}

double DistOptimizer::ClipGradNorm(double max_norm) {
  const double norm = std::sqrt(GradSquaredNorm());
  if (max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) ScaleGrads(coef);
  }
  return norm;
}

void DistOptimizer::Step(double lr) {
  torch::NoGradGuard no_grad;
  const auto& params = grads_.params();
  if (adamw_) {
    std::vector<bool> update(params.size());
    for (size_t i = 0; i < params.size(); ++i)
      update[i] = grads_.used(static_cast<int>(i));
    adamw_->Step(lr, update);
    return;
  }
  ++steps_;
  const AdamWStepScalars scalars(options_.adamw, steps_, lr);
  const BucketLayout& layout = grads_.layout();
  for (size_t b = 0; b < shards_.size(); ++b) {
    Shard& s = shards_[b];
    const at::Tensor grad = SegmentGrad(static_cast<int>(b));
    const int64_t seg_begin =
        layout.SegmentOffset(static_cast<int>(b), dp_rank_);
    bool changed = false;
    for (size_t k = 0; k < s.pieces.size(); ++k) {
      const auto& piece = s.pieces[k];
      if (!grads_.used(piece.param)) continue;
      const int64_t at = piece.buffer_offset - seg_begin;
      at::Tensor master = s.master.narrow(0, at, piece.numel);
      at::Tensor exp_avg = s.exp_avg.narrow(0, at, piece.numel);
      at::Tensor exp_avg_sq = s.exp_avg_sq.narrow(0, at, piece.numel);
      AdamWUpdate(scalars, s.decay[k], grad.narrow(0, at, piece.numel), master,
                  exp_avg, exp_avg_sq);
      changed = true;
    }
    if (changed && !s.master.is_same(s.param)) s.param.copy_(s.master);
  }
  Comm& dp = *grads_.groups().dp;
  if (dp.size() == 1) return;
  std::vector<std::shared_ptr<CommWork>> works;
  for (size_t b = 0; b < shards_.size(); ++b) {
    const auto& bucket = layout.buckets()[b];
    if (bucket.numel == 0) continue;
    at::Tensor whole =
        param_buffers_[bucket.buffer].narrow(0, bucket.offset, bucket.numel);
    works.push_back(dp.AllGatherIntoAsync(shards_[b].param, whole));
  }
  for (auto& w : works) w->Wait();
}

int64_t DistOptimizer::StateBytes() const {
  int64_t bytes = 0;
  for (const auto& [name, t] : StateTensors())
    bytes += t.numel() * t.element_size();
  return bytes;
}

std::map<std::string, at::Tensor> DistOptimizer::StateTensors() const {
  if (adamw_) return adamw_->StateTensors();
  std::map<std::string, at::Tensor> out;
  for (size_t b = 0; b < shards_.size(); ++b) {
    const Shard& s = shards_[b];
    out[Key(b, "exp_avg")] = s.exp_avg;
    out[Key(b, "exp_avg_sq")] = s.exp_avg_sq;
    if (!s.master.is_same(s.param)) out[Key(b, "master")] = s.master;
  }
  return out;
}

absl::Status DistOptimizer::LoadState(
    const std::map<std::string, at::Tensor>& state, int64_t steps) {
  if (adamw_) return adamw_->LoadState(state, steps);
  StateLoader loader(state);
  for (size_t b = 0; b < shards_.size(); ++b) {
    const Shard& s = shards_[b];
    GEMMA_RETURN_IF_ERROR(loader.Take(Key(b, "exp_avg"), s.exp_avg));
    GEMMA_RETURN_IF_ERROR(loader.Take(Key(b, "exp_avg_sq"), s.exp_avg_sq));
    if (!s.master.is_same(s.param))
      GEMMA_RETURN_IF_ERROR(loader.Take(Key(b, "master"), s.master));
  }
  loader.Apply();
  steps_ = steps;
  return absl::OkStatus();
}

std::string DistOptimizer::ShardFileName(int world_rank) {
  return absl::StrFormat("optimizer-rank-%05d.safetensors", world_rank);
}

std::string DistOptimizer::LayoutJson() const {
  const BucketLayout& layout = grads_.layout();
  const auto& params = grads_.params();
  nlohmann::json j;
  j["zero_stage"] = options_.zero_stage;
  j["dp"] = layout.dp();
  j["dp_rank"] = dp_rank_;
  j["tp"] = grads_.groups().tp->size();
  j["tp_rank"] = grads_.groups().tp->rank();
  nlohmann::json buckets = nlohmann::json::array();
  for (const auto& bucket : layout.buckets()) {
    nlohmann::json b;
    b["dtype"] = std::string(c10::toString(layout.dtypes()[bucket.buffer]));
    b["offset"] = bucket.offset;
    b["numel"] = bucket.numel;
    nlohmann::json ps = nlohmann::json::array();
    for (int i : bucket.params) {
      ps.push_back({{"name", params[i].name},
                    {"shape", params[i].param.sizes().vec()},
                    {"offset", layout.slots()[i].offset}});
    }
    b["params"] = std::move(ps);
    buckets.push_back(std::move(b));
  }
  j["buckets"] = std::move(buckets);
  return j.dump();
}

absl::StatusOr<int64_t> DistOptimizer::WriteShard(
    const std::string& path,
    const std::map<std::string, at::Tensor>& extra) const {
  if (adamw_) {
    return absl::FailedPreconditionError(
        "optimizer shard files are for zero_stage 1");
  }
  std::map<std::string, at::Tensor> tensors = StateTensors();
  for (const auto& [k, t] : extra) tensors[k] = t;
  std::vector<at::Tensor> keep;
  SafetensorsWriter writer;
  int64_t bytes = 0;
  for (const auto& [name, t] : tensors) {
    keep.push_back(t.detach().to(at::kCPU).contiguous());
    bytes += keep.back().numel() * keep.back().element_size();
    GEMMA_RETURN_IF_ERROR(AddTensor(writer, name, keep.back()));
  }
  writer.SetMetadata({{"format", kShardFormat},
                      {"steps", absl::StrCat(steps())},
                      {"layout", LayoutJson()}});
  GEMMA_RETURN_IF_ERROR(writer.Write(path));
  return bytes;
}

absl::StatusOr<std::map<std::string, at::Tensor>> DistOptimizer::ReadShard(
    const std::string& path, int64_t steps) {
  GEMMA_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  const auto& meta = file->metadata();
  auto format = meta.find("format");
  auto layout = meta.find("layout");
  if (format == meta.end() || format->second != kShardFormat ||
      layout == meta.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not an optimizer shard file (metadata format ",
                     kShardFormat, " with a layout expected)"));
  }
  nlohmann::json saved = nlohmann::json::parse(layout->second, nullptr,
                                               /*allow_exceptions=*/false);
  if (saved.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the layout metadata is not JSON"));
  }
  const std::string diff =
      JsonDiff(saved, nlohmann::json::parse(LayoutJson()), "");
  if (!diff.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        path,
        ": written for another parameter or parallel layout than this "
        "run's (",
        diff, ")"));
  }
  std::map<std::string, at::Tensor> tensors;
  for (const auto& info : file->tensors()) {
    GEMMA_ASSIGN_OR_RETURN(at::Tensor view, TensorView(file, info.name));
    tensors[info.name] = view.clone();
  }
  std::map<std::string, at::Tensor> extra = tensors;
  for (const auto& [k, t] : StateTensors()) extra.erase(k);
  auto st = LoadState(tensors, steps);
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", st.message()));
  }
  return extra;
}

}  // namespace gemma
