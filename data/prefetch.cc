#include "data/prefetch.h"

#include <torch/torch.h>

#include <algorithm>
#include <utility>

namespace gemma {
namespace {

void Pin(torch::Tensor& t) {
  if (t.defined() && t.numel() > 0 && !t.is_pinned()) t = t.pin_memory();
}

bool CanPin() {
  static const bool can = torch::cuda::is_available();
  return can;
}

}  // namespace

BatchPrefetcher::BatchPrefetcher(std::unique_ptr<DataLoader> loader, int depth,
                                 bool pin_memory)
    : loader_(std::move(loader)),
      depth_(static_cast<size_t>(std::max(1, depth))),
      pin_memory_(pin_memory && CanPin()),
      position_(loader_->position()) {
  thread_ = std::thread([this] { Produce(); });
}

BatchPrefetcher::~BatchPrefetcher() { StopThread(); }

void BatchPrefetcher::StopThread() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<std::unique_ptr<DataLoader>> BatchPrefetcher::Stop() {
  StopThread();
  if (!loader_)
    return absl::FailedPreconditionError("prefetcher already stopped");
  ready_.clear();
  absl::Status s = loader_->Seek(position_);
  if (!s.ok()) return s;
  return std::move(loader_);
}

void BatchPrefetcher::Produce() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stop_ || ready_.size() < depth_; });
      if (stop_) return;
    }
    Item item{loader_->Next(), loader_->position()};
    if (item.batch.ok() && pin_memory_) {
      Batch& b = *item.batch;
      for (torch::Tensor* t :
           {&b.input_ids, &b.labels, &b.attention_mask, &b.segment_ids,
            &b.position_ids, &b.token_type_ids, &b.pixel_values}) {
        Pin(*t);
      }
    }
    const bool error = !item.batch.ok();
    {
      std::lock_guard<std::mutex> lock(mu_);
      skipped_ = loader_->skipped();
      ready_.push_back(std::move(item));
    }
    cv_.notify_all();
    if (error) return;  // the consumer sees the error; nothing follows it
  }
}

absl::StatusOr<Batch> BatchPrefetcher::Next() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return failed_ || !ready_.empty(); });
  if (ready_.empty()) {
    return absl::FailedPreconditionError(
        "batch stream ended after an earlier error");
  }
  Item item = std::move(ready_.front());
  ready_.pop_front();
  if (!item.batch.ok()) {
    failed_ = true;
  } else {
    position_ = item.after;
  }
  lock.unlock();
  cv_.notify_all();
  return std::move(item.batch);
}

LoaderPosition BatchPrefetcher::position() const {
  std::lock_guard<std::mutex> lock(mu_);
  return position_;
}

int64_t BatchPrefetcher::skipped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return skipped_;
}

}  // namespace gemma
