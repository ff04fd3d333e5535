// Prepares batches on a background thread while the model runs: image
// decoding, resizing and tokenization of batch n+1..n+depth overlap step n.
//
// Batches come out exactly as DataLoader::Next would give them, in the same
// order, and position() is the loader position after the last batch handed
// out (not after the ones prepared ahead), so a checkpoint that saves it and a
// resume that Seeks to it continue with the same next batch. With
// pin_memory (CUDA builds only; ignored without a GPU) batch tensors are in
// page-locked memory so the copy to the GPU can be asynchronous.
//
//   auto loader = DataLoader::Create(...);
//   BatchPrefetcher batches(std::move(*loader), /*depth=*/2);
//   for (...) { GEMMA_ASSIGN_OR_RETURN(Batch b, batches.Next()); ... }
//   SaveState(batches.position());
#ifndef GEMMA_DATA_PREFETCH_H_
#define GEMMA_DATA_PREFETCH_H_

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "data/batch.h"

namespace gemma {

class BatchPrefetcher {
 public:
  // depth >= 1: batches prepared ahead. The loader is owned from here on and
  // used only by the background thread.
  BatchPrefetcher(std::unique_ptr<DataLoader> loader, int depth = 2,
                  bool pin_memory = false);
  ~BatchPrefetcher();  // stops the thread (waits for the batch in progress)
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  // The next batch, waiting for it if it is not ready. An error from the
  // loader is returned in its place in the stream; later calls fail with
  // FailedPrecondition.
  absl::StatusOr<Batch> Next();

  // Loader position after the last batch Next() returned.
  LoaderPosition position() const;
  // Stops the background thread and hands the loader back, positioned after
  // the last batch Next() returned (batches prepared ahead are dropped). The
  // prefetcher is empty afterwards: only destruction is allowed.
  absl::StatusOr<std::unique_ptr<DataLoader>> Stop();
  // Batches skipped as bad by the loader so far (prepared ones included).
  int64_t skipped() const;

 private:
  struct Item {
    absl::StatusOr<Batch> batch;
    LoaderPosition after;
  };
  void Produce();
  // Tells the background thread to stop and waits for it (a no-op once it has
  // ended).
  void StopThread();

  std::unique_ptr<DataLoader> loader_;
  const size_t depth_;
  const bool pin_memory_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> ready_;
  LoaderPosition position_;
  int64_t skipped_ = 0;
  bool stop_ = false;
  bool failed_ = false;
  std::thread thread_;
};

}  // namespace gemma

#endif  // GEMMA_DATA_PREFETCH_H_
