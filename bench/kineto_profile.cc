#include "bench/kineto_profile.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace gemma {
namespace {

namespace prof = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;

const std::set<ActivityType>& Activities() {
  static const std::set<ActivityType> acts{ActivityType::CPU,
                                           ActivityType::CUDA};
  return acts;
}

prof::ProfilerConfig Config() {
  return prof::ProfilerConfig(prof::ProfilerState::KINETO);
}

struct Total {
  double ns = 0;
  int64_t count = 0;
};

std::string CsvField(std::string s) {
  std::replace(s.begin(), s.end(), '"', '\'');
  return "\"" + s + "\"";
}

// Writes `totals` most first as CSV and prints the top rows.
void WriteTable(const std::string& path, const std::string& title,
                const std::map<std::string, Total>& totals, double all_ns,
                int steps, int top, bool per_call) {
  std::vector<std::pair<std::string, Total>> rows(totals.begin(), totals.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    return a.second.ns > b.second.ns;
  });
  std::ofstream f(path);
  f << (per_call ? "rank,total_ms,pct,count,avg_us,name\n"
                 : "rank,total_ms,pct,kernels,name\n");
  std::printf("== %s: %.2f ms of GPU time per step\n", title.c_str(),
              all_ns / 1e6 / steps);
  for (size_t i = 0; i < rows.size(); ++i) {
    const Total& t = rows[i].second;
    const double ms = t.ns / 1e6 / steps;
    const double pct = 100.0 * t.ns / std::max(all_ns, 1.0);
    f << i + 1 << "," << ms << "," << pct << "," << t.count / steps;
    if (per_call) f << "," << t.ns / 1e3 / std::max<int64_t>(t.count, 1);
    f << "," << CsvField(rows[i].first) << "\n";
    if (static_cast<int>(i) < top) {
      std::printf("%3zu %8.2f ms %5.1f%% %6lld  %.110s\n", i + 1, ms, pct,
                  static_cast<long long>(t.count / steps),
                  rows[i].first.c_str());
    }
  }
}

}  // namespace

KinetoProfile::KinetoProfile() {
  prof::prepareProfiler(Config(), Activities());
  prof::enableProfiler(Config(), Activities());
  active_ = true;
}

KinetoProfile::~KinetoProfile() {
  if (active_) prof::disableProfiler();
}

void KinetoProfile::Finish(const std::string& dir, int steps, int top) {
  active_ = false;
  std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
  // CPU ops by correlation id; a kernel's linked id names its launching op.
  std::unordered_map<uint64_t, std::pair<uint64_t, std::string>> op_of;
  for (const auto& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CPU) continue;
    if (e.name().rfind("aten::", 0) != 0 && e.name().rfind("gemma", 0) != 0)
      continue;
    // Keep the innermost (latest-starting) op of a correlation id.
    auto& slot = op_of[e.correlationId()];
    if (slot.second.empty() || e.startNs() >= slot.first)
      slot = {e.startNs(), e.name()};
  }
  std::map<std::string, Total> kernels, ops, timeline, runtime;
  double all_ns = 0, runtime_ns = 0;
  // (start, end, name) of every GPU event, for the timeline table.
  std::vector<std::tuple<int64_t, int64_t, std::string>> spans;
  for (const auto& e : result->events()) {
    const double ns = static_cast<double>(e.durationNs());
    if (e.deviceType() == c10::DeviceType::CPU &&
        e.name().rfind("cuda", 0) == 0) {
      // Host time in CUDA runtime calls (launches, graph launches, syncs).
      Total& t = runtime[e.name()];
      t.ns += ns;
      runtime_ns += ns;
      ++t.count;
    }
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    spans.emplace_back(e.startNs(), e.endNs(), e.name());
    all_ns += ns;
    Total& k = kernels[e.name()];
    k.ns += ns;
    ++k.count;
    auto it = op_of.find(e.linkedCorrelationId());
    Total& o = ops[it == op_of.end() ? "(no op)" : it->second.second];
    o.ns += ns;
    ++o.count;
  }
  WriteTable(dir + "/kernels.csv", "kernels", kernels, all_ns, steps, top,
             true);
  // Overlapping kernels (chained launches start before their predecessor
  // ends and then wait) inflate the durations above. The timeline charges
  // each kernel only the time by which it pushed the latest end further,
  // gaps before it included: the rows sum to the wall time of the region.
  std::sort(spans.begin(), spans.end());
  double wall_ns = 0;
  int64_t latest = spans.empty() ? 0 : std::get<0>(spans.front());
  for (const auto& [start, end, name] : spans) {
    const double ns = static_cast<double>(std::max<int64_t>(0, end - latest));
    latest = std::max(latest, end);
    wall_ns += ns;
    Total& t = timeline[name];
    t.ns += ns;
    ++t.count;
  }
  WriteTable(dir + "/timeline.csv", "timeline (wall time each kernel adds)",
             timeline, wall_ns, steps, top, true);
  WriteTable(dir + "/ops.csv", "GPU time by launching op", ops, all_ns, steps,
             top, false);
  WriteTable(dir + "/runtime.csv", "host time in CUDA runtime calls", runtime,
             runtime_ns, steps, 8, true);
  result->save(dir + "/trace.json");
}

}  // namespace gemma
