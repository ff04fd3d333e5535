// allreduce_bench: all-reduce latency and bus bandwidth of the c10d Comm
// (worker/comm.h) on N CPU ranks over Gloo, for buffer sizes 1 KB .. 64 MB.
//
//   allreduce_bench [--ranks 4] [--min-bytes 1024] [--max-bytes 67108864]
//                   [--iters 0] [-o json]
//
// The ranks are threads of this process with their own Gloo groups, talking
// over real TCP sockets on 127.0.0.1 through a real TCPStore (RunGlooRanks).
// Bus bandwidth follows the NCCL-tests convention: algbw * 2 (n-1) / n, so
// numbers compare across rank counts. Every all-reduce's sum is checked.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_format.h"
#include "common/flags.h"
#include "nlohmann/json.hpp"
#include "worker/comm.h"

namespace gemma {
namespace {

struct Row {
  int64_t bytes = 0;
  int iters = 0;
  double avg_us = 0;
  double algbw_gbps = 0;
  double busbw_gbps = 0;
};

int Run(int argc, char** argv) {
  int ranks = 4;
  int64_t min_bytes = 1024, max_bytes = 64ll << 20;
  int iters = 0;
  std::string output = "text";
  FlagSet flags("allreduce_bench",
                "All-reduce bus bandwidth of the Gloo Comm on N CPU ranks\n"
                "(threads over loopback TCP), for sizes doubling from\n"
                "--min-bytes to --max-bytes.");
  flags.Int("ranks", &ranks, "number of ranks (>= 2)");
  flags.Int("min-bytes", &min_bytes, "smallest buffer in bytes");
  flags.Int("max-bytes", &max_bytes, "largest buffer in bytes");
  flags.Int("iters", &iters,
            "timed iterations per size (0: about 0.5 s worth, 3..200)");
  flags.String("output", &output, "text or json").Short('o');
  flags.Epilog("Example:\n  allreduce_bench --ranks 4 -o json");
  if (auto exit_code = flags.ParseOrExit(argc, argv)) return *exit_code;
  if (ranks < 2 || min_bytes < 4 || max_bytes < min_bytes ||
      (output != "text" && output != "json")) {
    return flags.UsageError(
        "need --ranks >= 2, 4 <= --min-bytes <= --max-bytes, -o text|json");
  }
  std::vector<int64_t> sizes;
  for (int64_t b = min_bytes; b <= max_bytes; b *= 2) sizes.push_back(b);
  std::vector<Row> rows(sizes.size());
  const bool text = output == "text";
  if (text) {
    std::printf("all-reduce (sum, float32) on %d Gloo CPU ranks\n", ranks);
    std::printf("%12s %7s %12s %12s %12s\n", "bytes", "iters", "avg_us",
                "algbw_GB/s", "busbw_GB/s");
  }
  absl::Status st;
  st = RunGlooRanks(ranks, [&](int rank, ParallelGroups& g) -> absl::Status {
    for (size_t i = 0; i < sizes.size(); ++i) {
      const int64_t elems = sizes[i] / 4;
      at::Tensor buf = at::full({elems}, 1.0f);
      g.world->AllReduceSum(buf);  // warm-up
      // Rank 0 picks the iteration count from the warm-up and shares it.
      int n = iters;
      if (n <= 0) {
        buf.fill_(1.0f);
        auto t0 = std::chrono::steady_clock::now();
        g.world->AllReduceSum(buf);
        double once = std::chrono::duration<double>(
                          std::chrono::steady_clock::now() - t0)
                          .count();
        at::Tensor pick = at::tensor(
            {static_cast<int64_t>(std::clamp(0.5 / std::max(once, 1e-6), 3.0,
                                             200.0))},
            at::kLong);
        g.world->Broadcast(pick, 0);
        n = static_cast<int>(pick.item<int64_t>());
      }
      g.world->Barrier();
      auto t0 = std::chrono::steady_clock::now();
      for (int k = 0; k < n; ++k) {
        buf.fill_(static_cast<float>(rank + 1));
        g.world->AllReduceSum(buf);
      }
      double secs = std::chrono::duration<double>(
                        std::chrono::steady_clock::now() - t0)
                        .count();
      const float want = ranks * (ranks + 1) / 2.0f;
      if (!buf.eq(want).all().item<bool>()) {
        return absl::DataLossError(
            absl::StrFormat("wrong all-reduce sum at %d bytes", sizes[i]));
      }
      if (rank == 0) {
        Row& r = rows[i];
        r.bytes = elems * 4;
        r.iters = n;
        r.avg_us = secs / n * 1e6;
        r.algbw_gbps = r.bytes / (secs / n) / 1e9;
        r.busbw_gbps = r.algbw_gbps * 2.0 * (ranks - 1) / ranks;
        if (text) {
          std::printf("%12lld %7d %12.1f %12.3f %12.3f\n",
                      static_cast<long long>(r.bytes), r.iters, r.avg_us,
                      r.algbw_gbps, r.busbw_gbps);
          std::fflush(stdout);
        }
      }
    }
    return absl::OkStatus();
  });
  if (!st.ok()) {
    std::cerr << "allreduce_bench: " << st << "\n";
    return 1;
  }
  if (!text) {
    nlohmann::json j = {{"ranks", ranks}, {"backend", "gloo"}, {"rows", {}}};
    for (const Row& r : rows) {
      j["rows"].push_back({{"bytes", r.bytes},
                           {"iters", r.iters},
                           {"avg_us", r.avg_us},
                           {"algbw_gbps", r.algbw_gbps},
                           {"busbw_gbps", r.busbw_gbps}});
    }
    std::cout << j.dump(1) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace gemma

int main(int argc, char** argv) { return gemma::Run(argc, argv); }
