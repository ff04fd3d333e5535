#include "model/projection_split.h"

#include <torch/torch.h>

#include <algorithm>

namespace gemma {
namespace {

int64_t GlobalSize(const ProjectionSplit& s) {
  return s.kind == ProjectionSplit::Kind::kColumn ? s.out : s.in;
}

int64_t RangesSize(const ProjectionSplit::Ranges& ranges) {
  int64_t n = 0;
  for (const auto& [b, e] : ranges) n += e - b;
  return n;
}

void CheckEvenly(int64_t size, int n, const char* what) {
  TORCH_CHECK(n > 0 && size % n == 0, "projection split: ", what, " ", size,
              " does not split into ", n, " parts");
}

}  // namespace

bool ProjectionSplit::has_replicas() const {
  return !ReplicatedRanges(*this).empty();
}

ProjectionSplit ColumnSplit(std::shared_ptr<Comm> comm, int64_t out, int64_t in,
                            std::vector<ProjectionSplit::Ranges> ranges) {
  TORCH_CHECK(comm && static_cast<int>(ranges.size()) == comm->size(),
              "projection split: ", ranges.size(), " rank ranges for a group");
  ProjectionSplit s;
  s.kind = ProjectionSplit::Kind::kColumn;
  s.comm = std::move(comm);
  s.out = out;
  s.in = in;
  s.ranges = std::move(ranges);
  return s;
}

ProjectionSplit ColumnBlocksSplit(std::shared_ptr<Comm> comm, int64_t out,
                                  int64_t in, int64_t blocks) {
  const int n = comm->size();
  CheckEvenly(out, static_cast<int>(blocks), "rows");
  const int64_t block = out / blocks;
  CheckEvenly(block, n, "row block");
  const int64_t per = block / n;
  std::vector<ProjectionSplit::Ranges> ranges(n);
  for (int r = 0; r < n; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      ranges[r].push_back({b * block + r * per, b * block + (r + 1) * per});
    }
  }
  return ColumnSplit(std::move(comm), out, in, std::move(ranges));
}

ProjectionSplit RowSplit(std::shared_ptr<Comm> comm, int64_t out, int64_t in) {
  const int n = comm->size();
  CheckEvenly(in, n, "columns");
  const int64_t per = in / n;
  ProjectionSplit s;
  s.kind = ProjectionSplit::Kind::kRow;
  s.comm = std::move(comm);
  s.out = out;
  s.in = in;
  for (int r = 0; r < n; ++r) s.ranges.push_back({{r * per, (r + 1) * per}});
  return s;
}

at::Tensor ShardOf(const ProjectionSplit& split, const at::Tensor& whole,
                   int64_t dim) {
  if (!split.split()) return whole;
  TORCH_CHECK(whole.size(dim) == GlobalSize(split), "projection split: size ",
              whole.size(dim), " along dim ", dim, ", the whole is ",
              GlobalSize(split));
  const auto& ranges = split.ranges[static_cast<size_t>(split.rank())];
  if (ranges.size() == 1) {
    return whole.narrow(dim, ranges[0].first,
                        ranges[0].second - ranges[0].first);
  }
  std::vector<at::Tensor> parts;
  for (const auto& [b, e] : ranges)
    parts.push_back(whole.narrow(dim, b, e - b));
  return torch::cat(parts, dim);
}

at::Tensor GatherSplit(const ProjectionSplit& split, const at::Tensor& shard,
                       int64_t dim) {
  torch::NoGradGuard no_grad;
  if (!split.split()) return shard.detach().to(torch::kCPU).clone();
  Comm& comm = *split.comm;
  const int64_t own =
      RangesSize(split.ranges[static_cast<size_t>(comm.rank())]);
  TORCH_CHECK(shard.size(dim) == own, "projection split: shard size ",
              shard.size(dim), " along dim ", dim, ", its ranges hold ", own);
  at::Tensor all =
      comm.AllGather(shard.detach().to(comm.device()).contiguous(), dim)
          .to(torch::kCPU);
  std::vector<int64_t> shape = shard.sizes().vec();
  shape[static_cast<size_t>(dim)] = GlobalSize(split);
  at::Tensor whole = torch::zeros(shape, all.options());
  // Highest rank first, so the lowest rank's copy of a replica stays.
  for (int r = comm.size() - 1; r >= 0; --r) {
    int64_t offset = r * own;
    for (const auto& [b, e] : split.ranges[static_cast<size_t>(r)]) {
      whole.narrow(dim, b, e - b).copy_(all.narrow(dim, offset, e - b));
      offset += e - b;
    }
  }
  return whole;
}

namespace {

// Sorted, merged copy of `r` (empty ranges dropped).
ProjectionSplit::Ranges Merged(ProjectionSplit::Ranges r) {
  std::sort(r.begin(), r.end());
  ProjectionSplit::Ranges out;
  for (const auto& [b, e] : r) {
    if (b >= e) continue;
    if (!out.empty() && b <= out.back().second) {
      out.back().second = std::max(out.back().second, e);
    } else {
      out.push_back({b, e});
    }
  }
  return out;
}

// Calls fn(local_offset, global_begin, count) for every piece of rank
// `rank`'s shard that lies in `within` (global ranges).
template <typename Fn>
void ForEachOverlap(const ProjectionSplit& split, int rank,
                    const ProjectionSplit::Ranges& within, Fn fn) {
  int64_t offset = 0;
  for (const auto& [b, e] : split.ranges[static_cast<size_t>(rank)]) {
    for (const auto& [wb, we] : within) {
      const int64_t lo = std::max(b, wb), hi = std::min(e, we);
      if (lo < hi) fn(offset + lo - b, lo, hi - lo);
    }
    offset += e - b;
  }
}

}  // namespace

ProjectionSplit::Ranges ReplicatedRanges(const ProjectionSplit& split) {
  ProjectionSplit::Ranges shared;
  for (size_t r = 0; r < split.ranges.size(); ++r) {
    for (size_t q = r + 1; q < split.ranges.size(); ++q) {
      for (const auto& [b, e] : split.ranges[r]) {
        for (const auto& [qb, qe] : split.ranges[q]) {
          shared.push_back({std::max(b, qb), std::min(e, qe)});
        }
      }
    }
  }
  return Merged(std::move(shared));
}

ProjectionSplit::Ranges LowerRankCopies(const ProjectionSplit& split) {
  if (!split.split()) return {};
  const int me = split.rank();
  ProjectionSplit::Ranges lower;
  for (int q = 0; q < me; ++q) {
    for (const auto& r : split.ranges[static_cast<size_t>(q)]) {
      lower.push_back(r);
    }
  }
  lower = Merged(std::move(lower));
  ProjectionSplit::Ranges local;
  ForEachOverlap(split, me, lower, [&](int64_t at, int64_t, int64_t n) {
    local.push_back({at, at + n});
  });
  return Merged(std::move(local));
}

at::Tensor SumReplicas(const ProjectionSplit& split, const at::Tensor& grad) {
  TORCH_CHECK(split.kind == ProjectionSplit::Kind::kColumn,
              "projection split: SumReplicas needs a column split");
  torch::NoGradGuard no_grad;
  const ProjectionSplit::Ranges shared = ReplicatedRanges(split);
  if (shared.empty()) return grad;
  Comm& comm = *split.comm;
  // The replicated rows only, packed in global order: each rank adds its
  // copies at their packed places; the sum over the group is every holder's.
  std::vector<int64_t> packed_at;  // packed offset of each shared range
  int64_t total = 0;
  for (const auto& [b, e] : shared) {
    packed_at.push_back(total);
    total += e - b;
  }
  auto packed_offset = [&](int64_t global) {
    size_t i = 0;
    while (shared[i].second <= global) ++i;
    return packed_at[i] + global - shared[i].first;
  };
  std::vector<int64_t> shape = grad.sizes().vec();
  shape[0] = total;
  at::Tensor buf = torch::zeros(shape, grad.options().device(comm.device()));
  ForEachOverlap(split, comm.rank(), shared,
                 [&](int64_t at, int64_t global, int64_t n) {
                   buf.narrow(0, packed_offset(global), n)
                       .add_(grad.narrow(0, at, n).to(buf.device()));
                 });
  comm.AllReduceSum(buf);
  at::Tensor out = grad.clone();
  ForEachOverlap(split, comm.rank(), shared,
                 [&](int64_t at, int64_t global, int64_t n) {
                   out.narrow(0, at, n).copy_(
                       buf.narrow(0, packed_offset(global), n));
                 });
  return out;
}

}  // namespace gemma
