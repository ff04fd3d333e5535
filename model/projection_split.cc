#include "model/projection_split.h"

#include <torch/torch.h>

#include <set>

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
  std::set<int64_t> seen;
  for (const Ranges& r : ranges) {
    for (const auto& [b, e] : r) {
      for (int64_t i = b; i < e; ++i) {
        if (!seen.insert(i).second) return true;
      }
    }
  }
  return false;
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

at::Tensor SumReplicas(const ProjectionSplit& split, const at::Tensor& grad) {
  TORCH_CHECK(split.kind == ProjectionSplit::Kind::kColumn,
              "projection split: SumReplicas needs a column split");
  torch::NoGradGuard no_grad;
  Comm& comm = *split.comm;
  // Every rank's rows at their global places; each index sums its holders.
  std::vector<int64_t> shape = grad.sizes().vec();
  shape[0] = split.out;
  at::Tensor whole = torch::zeros(shape, grad.options().device(comm.device()));
  int64_t offset = 0;
  for (const auto& [b, e] : split.ranges[static_cast<size_t>(comm.rank())]) {
    whole.narrow(0, b, e - b)
        .add_(grad.narrow(0, offset, e - b).to(whole.device()));
    offset += e - b;
  }
  comm.AllReduceSum(whole);
  return ShardOf(split, whole, 0).to(grad.device()).contiguous();
}

}  // namespace gemma
