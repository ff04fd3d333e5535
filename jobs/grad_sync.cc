#include "jobs/grad_sync.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <unordered_set>

namespace gemma {

BucketLayout::BucketLayout(const std::vector<TrainParam>& params,
                           int64_t bucket_bytes, int dp)
    : dp_(dp) {
  TORCH_CHECK(dp >= 1, "BucketLayout: dp must be >= 1, got ", dp);
  const int n = static_cast<int>(params.size());
  slots_.resize(n);
  auto buffer_of = [&](at::ScalarType t) {
    auto it = std::find(dtypes_.begin(), dtypes_.end(), t);
    if (it != dtypes_.end()) return static_cast<int>(it - dtypes_.begin());
    dtypes_.push_back(t);
    buffer_numel_.push_back(0);
    return static_cast<int>(dtypes_.size()) - 1;
  };
  // A bucket takes its place in the order when it is closed (full, or at
  // the end by its last parameter): it is ready about when that parameter
  // is, so a small bucket of another dtype filling slowly does not hold up
  // the others. Closing pads it to a multiple of dp and places it in its
  // buffer.
  auto close = [&](Bucket bucket) {
    bucket.numel = (bucket.numel + dp - 1) / dp * dp;
    bucket.segment = bucket.numel / dp;
    bucket.offset = buffer_numel_[bucket.buffer];
    buffer_numel_[bucket.buffer] += bucket.numel;
    for (int i : bucket.params) {
      slots_[i].bucket = static_cast<int>(buckets_.size());
      slots_[i].offset += bucket.offset;
    }
    buckets_.push_back(std::move(bucket));
  };
  // Ordinary parameters first, then the TP-partial ones in buckets of their
  // own (reduced over TP at the end of backward); each in reverse order.
  for (bool partial : {false, true}) {
    std::vector<Bucket> open;  // per buffer; empty params: none open
    for (int i = n - 1; i >= 0; --i) {
      const TrainParam& p = params[i];
      if (p.tp_partial != partial) continue;
      const int d = buffer_of(p.param.scalar_type());
      if (static_cast<int>(open.size()) <= d) open.resize(d + 1);
      Bucket& bucket = open[d];
      bucket.buffer = d;
      bucket.tp_partial = partial;
      slots_[i] = Slot{-1, bucket.numel, p.param.numel()};
      bucket.params.push_back(i);
      bucket.numel += p.param.numel();
      if (bucket.numel * p.param.element_size() >= bucket_bytes) {
        close(std::move(bucket));
        bucket = Bucket{};
      }
    }
    std::vector<Bucket*> left;
    for (Bucket& b : open) {
      if (!b.params.empty()) left.push_back(&b);
    }
    // The bucket whose last parameter comes first in reverse order first.
    std::sort(left.begin(), left.end(), [](const Bucket* a, const Bucket* b) {
      return a->params.back() > b->params.back();
    });
    for (Bucket* b : left) close(std::move(*b));
  }
}

std::vector<at::Tensor> BucketLayout::NewBuffers(
    const at::Device& device) const {
  std::vector<at::Tensor> buffers;
  for (size_t d = 0; d < dtypes_.size(); ++d) {
    buffers.push_back(
        at::zeros({buffer_numel_[d]},
                  at::TensorOptions().dtype(dtypes_[d]).device(device)));
  }
  return buffers;
}

at::Tensor BucketLayout::SlotView(const std::vector<at::Tensor>& buffers,
                                  size_t i, at::IntArrayRef sizes) const {
  const Slot& s = slots_[i];
  return buffers[buckets_[s.bucket].buffer]
      .narrow(0, s.offset, s.numel)
      .view(sizes);
}

std::vector<BucketLayout::Piece> BucketLayout::SegmentPieces(int b,
                                                             int rank) const {
  const Bucket& bucket = buckets_[b];
  const int64_t begin = SegmentOffset(b, rank);
  const int64_t end = begin + bucket.segment;
  std::vector<Piece> pieces;
  for (int i : bucket.params) {
    const Slot& s = slots_[i];
    const int64_t lo = std::max(begin, s.offset);
    const int64_t hi = std::min(end, s.offset + s.numel);
    if (lo >= hi) continue;
    pieces.push_back(Piece{i, lo - s.offset, lo, hi - lo});
  }
  std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) {
    return a.buffer_offset < b.buffer_offset;
  });
  return pieces;
}

// Tells the GradSync that the accumulator of parameter `param` ran.
class GradSync::ReadyHook : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(GradSync* sync, int param) : sync_(sync), param_(param) {}
  torch::autograd::variable_list operator()(
      const torch::autograd::variable_list& outputs,
      const torch::autograd::variable_list& /*inputs*/) override {
    sync_->MarkReady(param_);
    return outputs;
  }

 private:
  GradSync* sync_;
  int param_;
};

GradSync::GradSync(std::vector<TrainParam> params, const ParallelGroups& groups,
                   GradSyncOptions options)
    : params_(std::move(params)),
      groups_(groups),
      options_(options),
      layout_(params_, options.bucket_bytes, groups.dp->size()) {
  TORCH_CHECK(!params_.empty(), "GradSync: no parameters");
  const at::Device device = params_[0].param.device();
  std::unordered_set<const void*> seen;
  for (const TrainParam& p : params_) {
    TORCH_CHECK(
        p.param.defined() && p.param.requires_grad() && p.param.is_leaf(),
        "GradSync: ", p.name, " is not a leaf requiring grad");
    TORCH_CHECK(p.param.device() == device, "GradSync: ", p.name, " is on ",
                p.param.device(), ", the others on ", device);
    TORCH_CHECK(seen.insert(p.param.unsafeGetTensorImpl()).second,
                "GradSync: ", p.name, " is listed twice");
  }
  buffers_ = layout_.NewBuffers(device);
  for (size_t i = 0; i < params_.size(); ++i)
    views_.push_back(layout_.SlotView(buffers_, i, params_[i].param.sizes()));
  const size_t n = params_.size();
  ready_.assign(n, 0);
  used_local_.assign(n, 0);
  used_.assign(n, 0);
  ZeroGrad();
  for (size_t i = 0; i < n; ++i) {
    // Holding the accumulator keeps it (and its hook) alive between
    // backwards: the parameter only references it weakly.
    std::shared_ptr<torch::autograd::Node> acc =
        torch::autograd::impl::grad_accumulator(params_[i].param);
    TORCH_CHECK(acc != nullptr, "GradSync: ", params_[i].name,
                " has no gradient accumulator");
    hook_keys_.push_back(acc->add_post_hook(
        std::make_unique<ReadyHook>(this, static_cast<int>(i))));
    accumulators_.push_back(std::move(acc));
  }
}

GradSync::~GradSync() {
  for (size_t i = 0; i < accumulators_.size(); ++i)
    accumulators_[i]->del_post_hook(hook_keys_[i]);
}

void GradSync::ZeroGrad() {
  std::lock_guard<std::mutex> lock(mu_);
  works_.clear();
  for (at::Tensor& b : buffers_) b.zero_();
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& g = params_[i].param.grad();
    if (!g.defined() || !g.is_same(views_[i])) {
      params_[i].param.mutable_grad() = views_[i];
    }
  }
  std::fill(ready_.begin(), ready_.end(), 0);
  std::fill(used_local_.begin(), used_local_.end(), 0);
  pending_.clear();
  for (const auto& b : layout_.buckets())
    pending_.push_back(static_cast<int>(b.params.size()));
  next_launch_ = 0;
  launched_early_ = 0;
  armed_ = false;
}

void GradSync::BeginBackward(bool last) {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = last && options_.overlap;
}

void GradSync::MarkReady(int param) {
  std::lock_guard<std::mutex> lock(mu_);
  used_local_[param] = 1;
  if (!armed_) return;
  // A second accumulation after the bucket started would race with the
  // collective reading it.
  TORCH_CHECK(!ready_[param], "GradSync: the gradient of ", params_[param].name,
              " was accumulated twice in one backward; overlapped reduction "
              "needs each parameter's accumulator to run once");
  ready_[param] = 1;
  --pending_[layout_.slots()[param].bucket];
  const int before = next_launch_;
  LaunchReadyLocked();
  launched_early_ += next_launch_ - before;
}

void GradSync::LaunchReadyLocked() {
  const auto& buckets = layout_.buckets();
  while (next_launch_ < static_cast<int>(buckets.size()) &&
         !buckets[next_launch_].tp_partial && pending_[next_launch_] == 0) {
    Launch(next_launch_++);
  }
}

at::Tensor GradSync::BucketGrad(int b) const {
  const auto& bucket = layout_.buckets()[b];
  return buffers_[bucket.buffer].narrow(0, bucket.offset, bucket.numel);
}

at::Tensor GradSync::ReducedGrad(int b) const {
  const auto& bucket = layout_.buckets()[b];
  if (!options_.shard) return BucketGrad(b);
  return buffers_[bucket.buffer].narrow(
      0, layout_.SegmentOffset(b, groups_.dp->rank()), bucket.segment);
}

void GradSync::Launch(int b) {
  Comm& dp = *groups_.dp;
  if (dp.size() == 1 || layout_.buckets()[b].numel == 0) return;
  at::Tensor whole = BucketGrad(b);
  if (options_.shard) {
    at::Tensor mine = ReducedGrad(b);
    works_.push_back(dp.ReduceScatterSumAsync(whole, mine));
  } else {
    works_.push_back(dp.AllReduceSumAsync(whole));
  }
}

void GradSync::FinishBackward() {
  std::unique_lock<std::mutex> lock(mu_);
  armed_ = false;
  const auto& buckets = layout_.buckets();
  const int n = static_cast<int>(buckets.size());
  // Everything not started yet, strictly in bucket order; the TP-partial
  // buckets (last in that order) summed over TP first.
  while (next_launch_ < n) {
    const int b = next_launch_++;
    if (buckets[b].tp_partial && groups_.tp->size() > 1) {
      at::Tensor whole = BucketGrad(b);
      groups_.tp->AllReduceSum(whole);
    }
    Launch(b);
  }
  // Which parameters got a gradient on any DP rank.
  at::Tensor used = at::tensor(used_local_, at::kInt).to(buffers_[0].device());
  if (groups_.dp->size() > 1)
    works_.push_back(groups_.dp->AllReduceSumAsync(used));
  std::vector<std::shared_ptr<CommWork>> works = std::move(works_);
  works_.clear();
  lock.unlock();
  for (auto& w : works) w->Wait();
  used = used.cpu();
  const int32_t* u = used.data_ptr<int32_t>();
  used_.assign(u, u + used.numel());
}

}  // namespace gemma
