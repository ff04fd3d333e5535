#include "coordinator/placement.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "proto/spec_check.h"

namespace gemma {
namespace v1 = ::gemma::v1;
namespace {

using HostMap = std::map<std::string, std::vector<std::string>>;

// Number of whole TP groups the hosts can hold.
int Groups(const HostMap& hosts, int tp) {
  int n = 0;
  for (const auto& [host, names] : hosts)
    n += static_cast<int>(names.size()) / tp;
  return n;
}

}  // namespace

bool WorkerFits(const v1::Worker& w, const v1::JobSpec& spec) {
  const bool want_cpu = spec.resources().device() == v1::DEVICE_CPU;
  if (want_cpu != (w.device_kind() == "cpu")) return false;
  return w.memory_bytes() >= spec.resources().min_memory_bytes();
}

PlacementResult PlaceGang(const v1::JobSpec& spec,
                          const std::vector<const v1::Worker*>& attached) {
  PlacementResult r;
  const int tp = std::max(1, spec.parallel().tp());
  const int dp = std::max(1, spec.parallel().dp());
  const int world = tp * dp;
  HostMap all, free;
  int n_all = 0, n_free = 0;
  for (const v1::Worker* w : attached) {
    if (!WorkerFits(*w, spec)) continue;
    all[w->host()].push_back(w->name());
    ++n_all;
    if (w->job().empty()) {
      free[w->host()].push_back(w->name());
      ++n_free;
    }
  }
  for (auto* m : {&all, &free}) {
    for (auto& [h, names] : *m) std::sort(names.begin(), names.end());
  }
  const std::string dev = DeviceName(spec.resources().device());
  const std::string shape =
      absl::StrCat(world, " ", dev, " worker", world == 1 ? "" : "s",
                   " (tp=", tp, " x dp=", dp, ")");
  const std::string mem =
      spec.resources().min_memory_bytes() > 0
          ? absl::StrCat(" with >= ", spec.resources().min_memory_bytes(),
                         " bytes")
          : "";
  if (n_all < world) {
    r.impossible = true;
    r.reason = absl::StrCat("needs ", shape, mem, "; only ", n_all,
                            " such worker", n_all == 1 ? "" : "s", " attached");
    return r;
  }
  if (Groups(all, tp) < dp) {
    r.impossible = true;
    r.reason = absl::StrCat(
        "needs ", dp, " groups of ", tp, " ", dev,
        " workers on one host each (tp groups stay on a host); the ", n_all,
        " attached allow only ", Groups(all, tp));
    return r;
  }
  if (Groups(free, tp) < dp) {
    r.reason = absl::StrCat("needs ", shape, mem, "; ", n_free, " free of ",
                            n_all, " attached");
    return r;
  }
  int placed_groups = 0;
  for (const auto& [host, names] : free) {
    for (size_t i = 0; i + tp <= names.size() && placed_groups < dp;
         i += tp, ++placed_groups) {
      for (int k = 0; k < tp; ++k) r.workers.push_back(names[i + k]);
    }
  }
  return r;
}

}  // namespace gemma
