#include "jobs/convert.h"

#include <sys/stat.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "jobs/one_rank_job.h"
#include "model/convert.h"

namespace gemma {
namespace {

bool IsOurCheckpoint(const std::string& dir) {
  struct stat st;
  return ::stat((dir + "/manifest.json").c_str(), &st) == 0;
}

class ConvertJob : public OneRankJob {
 public:
  ConvertJob()
      : OneRankJob("convert",
                   "; set the output layout with convert.tp, not "
                   "parallel.tp/dp") {}

 private:
  absl::Status RunOneRank(RankContext& ctx) override {
    const auto& c = ctx.spec.convert();
    if (ctx.Cancelled())
      return absl::CancelledError("convert cancelled before it started");
    ConvertOptions opt;
    opt.tp = c.tp() > 0 ? c.tp() : 1;
    opt.ep = c.ep() > 0 ? c.ep() : 1;
    const bool to_hf = c.to() == "hf";
    if (!to_hf) {
      // Checked here so the error names the spec's fields.
      absl::StatusOr<ModelFolderInfo> info = InspectModelFolder(c.input());
      absl::Status st = info.ok()
                            ? CheckConvertLayout(*info, opt.tp, opt.ep,
                                                 "convert.tp", "convert.ep")
                            : info.status();
      if (!st.ok()) {
        return WithContext(
            absl::StrCat("convert ", c.input(), " -> ", c.output(), ": "), st);
      }
    }
    // Progress at most once a second (and at the start), so that neither the
    // session nor a `gemmactl submit --follow` screen is flooded.
    auto last_report = std::chrono::steady_clock::time_point();
    opt.progress = [&](uint64_t done, uint64_t total) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_report < std::chrono::seconds(1)) return;
      last_report = now;
      ctx.Progress(static_cast<int64_t>(done), static_cast<int64_t>(total), {});
    };
    const bool from_ours = IsOurCheckpoint(c.input());
    absl::StatusOr<ConvertStats> stats;
    std::string what;
    if (to_hf) {
      what = "checkpoint -> HF";
      stats = ConvertCheckpointToHf(c.input(), c.output(), opt);
    } else if (from_ours) {
      what = absl::StrCat("checkpoint -> checkpoint (tp ", opt.tp, ", ep ",
                          opt.ep, ")");
      stats = ReshardCheckpoint(c.input(), c.output(), opt);
    } else {
      what =
          absl::StrCat("HF -> checkpoint (tp ", opt.tp, ", ep ", opt.ep, ")");
      stats = ConvertHfToCheckpoint(c.input(), c.output(), opt);
    }
    if (!stats.ok()) {
      return WithContext(
          absl::StrCat("convert ", c.input(), " -> ", c.output(), ": "),
          stats.status());
    }
    const double rate =
        stats->seconds > 0 ? stats->bytes / stats->seconds : 0.0;
    ctx.Progress(static_cast<int64_t>(stats->bytes),
                 static_cast<int64_t>(stats->bytes),
                 {{"bytes", static_cast<double>(stats->bytes)},
                  {"bytes_per_second", rate},
                  {"tensors", static_cast<double>(stats->tensors)}});
    ctx.Log(absl::StrFormat(
        "%s: %d tensors, %d files, %.1f MB in %.2f s (%.1f MB/s) -> %s", what,
        stats->tensors, stats->files, stats->bytes / 1e6, stats->seconds,
        rate / 1e6, c.output()));
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<Job> NewConvertJob() { return std::make_unique<ConvertJob>(); }

}  // namespace gemma
