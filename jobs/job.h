// The one interface every job kind implements. A Job runs one rank of one
// attempt inside a gemma-worker; the worker gives it a RankContext to report
// through. This header stays free of LibTorch so the worker's session code
// and tests can use it without it.
//
//   class MyJob : public Job {
//     absl::Status Run(RankContext& ctx) override {
//       for (int64_t s = 1; s <= n && !ctx.Cancelled(); ++s) { ...;
//       ctx.Progress(s, n, {}); } return ctx.Cancelled() ?
//       absl::CancelledError("stopped") : absl::OkStatus();
//     }
//   };
#ifndef GEMMA_JOBS_JOB_H_
#define GEMMA_JOBS_JOB_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "gemma/v1/job_spec.pb.h"

namespace gemma {

// What a rank knows of its attempt, and how it reports. The callbacks are
// thread-safe and never block for long (messages are queued for the session).
struct RankContext {
  gemma::v1::JobSpec spec;
  std::string job;  // jobs/{job}
  int attempt = 0;
  int rank = 0;
  int world = 1;
  std::string device;  // "cpu" or "cuda:N"
  // host:port of the attempt's rendezvous store (a c10d TCPStore opened by
  // rank 0's worker), empty for a one-rank attempt. The layout is
  // spec.parallel(); worker/comm.h's MakeParallelGroups(ctx) builds the
  // process groups from these.
  std::string store_address;
  // Registers a function that aborts this rank's communicators; the worker
  // calls it when the attempt fails or is cancelled, so no collective hangs.
  std::function<void(std::function<void()> abort)> on_abort;

  // step of total_steps done; metrics such as "loss", "gflops".
  std::function<void(int64_t step, int64_t total_steps,
                     const std::map<std::string, double>& metrics)>
      progress;
  std::function<void(const std::string& line)> log;
  // This rank's part of checkpoint `step` is complete at `path` (`bytes`).
  std::function<void(int64_t step, const std::string& path, int64_t bytes,
                     const std::map<std::string, double>& metrics)>
      checkpoint;
  // True once the rank was asked to stop (cancel or abort): return soon.
  std::function<bool()> cancelled;

  void Progress(int64_t step, int64_t total,
                const std::map<std::string, double>& m = {}) const {
    if (progress) progress(step, total, m);
  }
  void Log(const std::string& line) const {
    if (log) log(line);
  }
  bool Cancelled() const { return cancelled && cancelled(); }
};

class Job {
 public:
  virtual ~Job() = default;
  // Runs this rank to the end. OK when done; CANCELLED when it stopped because
  // Cancelled() became true; any other error fails the attempt. Must not
  // throw: LibTorch errors are turned into Status inside.
  virtual absl::Status Run(RankContext& ctx) = 0;
};

}  // namespace gemma

#endif  // GEMMA_JOBS_JOB_H_
