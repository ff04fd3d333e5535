#include "jobs/diagnose.h"

#include <sys/stat.h>
#include <torch/torch.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "worker/comm.h"

namespace gemma {
namespace {

// POSIX on purpose: libtorch.so exports its own std::filesystem symbols,
// which shadow libstdc++'s in processes that link it.
absl::Status MakeDirs(const std::string& path) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos == path.size() || path[pos] == '/') {
      const std::string prefix = path.substr(0, pos);
      if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
        return absl::InternalError(
            absl::StrCat("mkdir ", prefix, ": ", std::strerror(errno)));
      }
    }
  }
  return absl::OkStatus();
}

class DiagnoseJob : public Job {
 public:
  absl::Status Run(RankContext& ctx) override {
    try {
      return RunOrThrow(ctx);
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("diagnose rank ", ctx.rank,
                                              " on ", ctx.device, ": ",
                                              e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return absl::InternalError(
          absl::StrCat("diagnose rank ", ctx.rank, ": ", e.what()));
    }
  }

 private:
  absl::Status RunOrThrow(RankContext& ctx) {
    const auto& d = ctx.spec.diagnose();
    const int64_t steps = d.steps() > 0 ? d.steps() : 10;
    const int64_t n = d.matrix_size() > 0 ? d.matrix_size() : 256;
    const torch::Device device(ctx.device.empty() ? "cpu" : ctx.device);
    torch::manual_seed(1234 + ctx.rank);
    const auto opts =
        torch::TensorOptions().dtype(torch::kFloat32).device(device);
    torch::Tensor a =
        torch::randn({n, n}, opts) / std::sqrt(static_cast<double>(n));
    torch::Tensor b =
        torch::randn({n, n}, opts) / std::sqrt(static_cast<double>(n));
    ctx.Log(absl::StrFormat("rank %d/%d: %d steps of %dx%d matmul on %s",
                            ctx.rank, ctx.world, steps, n, n, device.str()));
    ctx.Progress(0, steps, {});
    const auto& ck = ctx.spec.checkpoint();
    // The all-reduce test: every rank contributes rank + 1 in every element.
    ParallelGroups groups;
    torch::Tensor buf;
    const int64_t ar_elems = d.allreduce_bytes() / 4;
    if (ar_elems > 0) {
      absl::StatusOr<ParallelGroups> g = MakeParallelGroups(ctx);
      if (!g.ok()) return g.status();
      groups = *g;
      buf = torch::empty({ar_elems}, opts);
      ctx.Log(absl::StrFormat("rank %d: all-reduce of %d bytes per step (%s)",
                              ctx.rank, ar_elems * 4, groups.world->backend()));
    }
    for (int64_t step = 1; step <= steps; ++step) {
      if (ctx.Cancelled())
        return absl::CancelledError("diagnose stopped on request");
      const auto t0 = std::chrono::steady_clock::now();
      torch::Tensor c = torch::mm(a, b);
      const double checksum =
          c.abs().sum().item<double>();  // waits for the device
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
              .count();
      const double gflops = 2.0 * n * n * n / std::max(secs, 1e-9) / 1e9;
      a = c /
          std::max(c.norm().item<double>() / std::sqrt(static_cast<double>(n)),
                   1e-12);
      std::map<std::string, double> metrics{
          {"gflops", gflops}, {"step_ms", secs * 1e3}, {"checksum", checksum}};
      if (ar_elems > 0) {
        GEMMA_RETURN_IF_ERROR(AllReduceStep(ctx, *groups.world, buf, &metrics));
      }
      ctx.Progress(step, steps, metrics);
      if (step % 10 == 0 || step == steps) {
        ctx.Log(absl::StrFormat("rank %d step %d/%d: %.2f GFLOP/s", ctx.rank,
                                step, steps, gflops));
      }
      if (ck.interval_steps() > 0 && !ck.root().empty() &&
          (step % ck.interval_steps() == 0 || step == steps)) {
        if (absl::Status s = WriteCheckpoint(ctx, step, checksum, gflops);
            !s.ok())
          return s;
      }
      // Sleep in slices so a cancel is seen quickly.
      for (int slept = 0; slept < d.step_sleep_ms() && !ctx.Cancelled();
           slept += 20) {
        absl::SleepFor(
            absl::Milliseconds(std::min(20, d.step_sleep_ms() - slept)));
      }
    }
    return absl::OkStatus();
  }

  // One checked all-reduce of `buf`; adds its time and bus bandwidth.
  static absl::Status AllReduceStep(const RankContext& ctx, Comm& world,
                                    torch::Tensor& buf,
                                    std::map<std::string, double>* metrics) {
    const int n = world.size();
    buf.fill_(ctx.rank + 1);
    const auto t0 = std::chrono::steady_clock::now();
    world.AllReduceSum(buf);
    const double want = n * (n + 1) / 2.0;
    const double lo = buf.min().item<double>(), hi = buf.max().item<double>();
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    if (lo != want || hi != want) {
      return absl::DataLossError(absl::StrFormat(
          "diagnose rank %d: all-reduce over %d ranks gave values in [%g, %g], "
          "expected %g",
          ctx.rank, n, lo, hi, want));
    }
    const double bytes = static_cast<double>(buf.numel()) * 4;
    (*metrics)["allreduce_ms"] = secs * 1e3;
    (*metrics)["allreduce_busbw_gbps"] =
        2.0 * (n - 1) / n * bytes / std::max(secs, 1e-9) / 1e9;
    return absl::OkStatus();
  }

  // Writes dir/rank-NNNNN.txt through a temporary name, then reports it.
  absl::Status WriteCheckpoint(RankContext& ctx, int64_t step, double checksum,
                               double gflops) {
    const std::string id = ctx.job.substr(ctx.job.rfind('/') + 1);
    const std::string dir = absl::StrFormat(
        "%s/%s/step-%06d", ctx.spec.checkpoint().root(), id, step);
    if (absl::Status s = MakeDirs(dir); !s.ok()) return s;
    const std::string file = absl::StrFormat("%s/rank-%05d.txt", dir, ctx.rank);
    const std::string tmp = file + ".tmp";
    const std::string text =
        absl::StrCat("step ", step, " checksum ", checksum, "\n");
    {
      std::ofstream out(tmp);
      out << text;
      if (!out.good())
        return absl::InternalError(absl::StrCat("cannot write ", tmp));
    }
    if (std::rename(tmp.c_str(), file.c_str()) != 0) {
      return absl::InternalError(
          absl::StrCat("rename ", tmp, ": ", std::strerror(errno)));
    }
    if (ctx.checkpoint) {
      ctx.checkpoint(step, dir, static_cast<int64_t>(text.size()),
                     {{"gflops", gflops}});
    }
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<Job> NewDiagnoseJob() {
  return std::make_unique<DiagnoseJob>();
}

}  // namespace gemma
