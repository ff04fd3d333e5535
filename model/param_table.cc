#include "model/param_table.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

ParamSpec Spec(std::string pattern, SplitKind split, int blocks = 1,
               bool kv_groups = false, int kv_rows = 2) {
  ParamSpec s;
  s.pattern = std::move(pattern);
  s.split = split;
  s.blocks = blocks;
  s.kv_groups = kv_groups;
  s.kv_rows = kv_rows;
  return s;
}

// "text.layers.12.attn.o.weight" -> "text.layers.{i}.attn.o.weight".
std::string ToPattern(absl::string_view name) {
  std::string out(name);
  const std::string key = ".layers.";
  size_t p = out.find(key);
  if (p == std::string::npos) return out;
  size_t b = p + key.size(), e = b;
  while (e < out.size() && std::isdigit(static_cast<unsigned char>(out[e])))
    ++e;
  if (e == b || e >= out.size() || out[e] != '.') return out;
  return out.substr(0, b) + "{i}" + out.substr(e);
}

// A fused attention weight (kRows with kv_groups) at tp > 1: whole KV groups,
// or query heads with K/V replicated (param_table.h, ComputeShard).
template <typename Bad>
absl::StatusOr<ShardLayout> KvGroupShard(const ParamSpec& spec,
                                         const std::vector<int64_t>& shape,
                                         const ShardDims& dims, int tp,
                                         int rank, const Bad& bad) {
  const int64_t rows = shape[0];
  const int64_t nkv = dims.kv_heads(TextLayerIndex(spec.name));
  const int64_t nq = dims.num_heads;
  ShardLayout l;
  l.shard_shape = shape;
  if (nkv < 1) return bad(absl::StrCat("num_key_value_heads ", nkv));
  if (rows % nkv != 0) return bad("rows are not whole KV groups");
  if (nkv % tp == 0) {  // whole KV groups
    const int64_t per = rows / tp;
    l.ranges = {{rank * per, (rank + 1) * per}};
    l.shard_shape[0] = per;
    return l;
  }
  if (nq < 1) {
    return bad(absl::StrCat("num_key_value_heads ", nkv,
                            " is not a multiple of tp (and with "
                            "num_attention_heads unknown, K/V heads cannot be "
                            "replicated)"));
  }
  if (tp % nkv != 0 || nq % tp != 0) {
    return bad(absl::StrCat(
        "num_attention_heads ", nq, ", num_key_value_heads ", nkv,
        ": needs num_key_value_heads a multiple of tp, or tp a multiple of "
        "num_key_value_heads and num_attention_heads a multiple of tp (K/V "
        "heads replicated)"));
  }
  const int64_t m = spec.kv_rows;
  if (m < 1 || rows % (nq + m * nkv) != 0) {
    return bad(absl::StrCat(rows, " rows are not (", nq, " + ", m, " x ", nkv,
                            ") heads"));
  }
  const int64_t hd = rows / (nq + m * nkv);
  const int64_t group_rows = rows / nkv;  // (nq / nkv + m) hd
  const int64_t share = tp / nkv;         // ranks sharing one KV group
  const int64_t g = rank / share, s = rank % share;
  const int64_t q_rows = nq / tp * hd;  // this rank's query rows
  const int64_t begin = g * group_rows;
  l.ranges = {{begin + s * q_rows, begin + (s + 1) * q_rows},
              {begin + nq / nkv * hd, begin + group_rows}};
  l.shard_shape[0] = q_rows + m * hd;
  return l;
}

}  // namespace

const std::vector<ParamSpec>& ParamTable() {
  using K = SplitKind;
  static const std::vector<ParamSpec> table = {
      Spec("text.embed.weight", K::kVocabRows),
      Spec("text.layers.{i}.input_norm.weight", K::kReplicated),
      Spec("text.layers.{i}.attn.qkv.weight", K::kRows, 1, /*kv_groups=*/true),
      Spec("text.layers.{i}.attn.o.weight", K::kCols),
      Spec("text.layers.{i}.attn.q_norm.weight", K::kReplicated),
      Spec("text.layers.{i}.attn.k_norm.weight", K::kReplicated),
      Spec("text.layers.{i}.post_attn_norm.weight", K::kReplicated),
      Spec("text.layers.{i}.pre_mlp_norm.weight", K::kReplicated),
      Spec("text.layers.{i}.mlp.gate_up.weight", K::kRowBlocks, 2),
      Spec("text.layers.{i}.mlp.down.weight", K::kCols),
      Spec("text.layers.{i}.post_mlp_norm.weight", K::kReplicated),
      Spec("text.final_norm.weight", K::kReplicated),
      Spec("vision.patch_embed.weight", K::kReplicated),
      Spec("vision.patch_embed.bias", K::kReplicated),
      Spec("vision.pos_embed.weight", K::kReplicated),
      Spec("vision.layers.{i}.ln1.weight", K::kReplicated),
      Spec("vision.layers.{i}.ln1.bias", K::kReplicated),
      Spec("vision.layers.{i}.attn.qkv.weight", K::kReplicated),
      Spec("vision.layers.{i}.attn.qkv.bias", K::kReplicated),
      Spec("vision.layers.{i}.attn.o.weight", K::kReplicated),
      Spec("vision.layers.{i}.attn.o.bias", K::kReplicated),
      Spec("vision.layers.{i}.ln2.weight", K::kReplicated),
      Spec("vision.layers.{i}.ln2.bias", K::kReplicated),
      Spec("vision.layers.{i}.mlp.fc1.weight", K::kReplicated),
      Spec("vision.layers.{i}.mlp.fc1.bias", K::kReplicated),
      Spec("vision.layers.{i}.mlp.fc2.weight", K::kReplicated),
      Spec("vision.layers.{i}.mlp.fc2.bias", K::kReplicated),
      Spec("vision.post_norm.weight", K::kReplicated),
      Spec("vision.post_norm.bias", K::kReplicated),
      Spec("projector.norm.weight", K::kReplicated),
      Spec("projector.proj.weight", K::kReplicated),
      // Gemma 4 (model/gemma4.h, model/moe.h, model/gemma4_model.h). Its text
      // names shared with Gemma 3 above keep their TP rules; qk (full layers
      // with K = V) splits like qkv, with one K head per group.
      Spec("text.layers.{i}.attn.qk.weight", K::kRows, 1, /*kv_groups=*/true,
           /*kv_rows=*/1),
      Spec("text.layers.{i}.post_dense_norm.weight", K::kReplicated),
      Spec("text.layers.{i}.layer_scalar", K::kReplicated),
      Spec("text.layers.{i}.moe.pre_norm.weight", K::kReplicated),
      Spec("text.layers.{i}.moe.post_norm.weight", K::kReplicated),
      Spec("text.layers.{i}.moe.router.proj.weight", K::kReplicated),
      Spec("text.layers.{i}.moe.router.scale", K::kReplicated),
      Spec("text.layers.{i}.moe.router.expert_scale", K::kReplicated),
      Spec("text.layers.{i}.moe.experts.gate_up", K::kExperts),
      Spec("text.layers.{i}.moe.experts.down", K::kExperts),
      Spec("vision.pos_table", K::kReplicated),
      Spec("vision.std_bias", K::kReplicated),
      Spec("vision.std_scale", K::kReplicated),
      Spec("vision.layers.{i}.input_norm.weight", K::kReplicated),
      Spec("vision.layers.{i}.post_attn_norm.weight", K::kReplicated),
      Spec("vision.layers.{i}.pre_mlp_norm.weight", K::kReplicated),
      Spec("vision.layers.{i}.post_mlp_norm.weight", K::kReplicated),
      Spec("vision.layers.{i}.attn.q_norm.weight", K::kReplicated),
      Spec("vision.layers.{i}.attn.k_norm.weight", K::kReplicated),
      Spec("vision.layers.{i}.mlp.gate_up.weight", K::kReplicated),
      Spec("vision.layers.{i}.mlp.down.weight", K::kReplicated),
  };
  return table;
}

int64_t ShardDims::kv_heads(int64_t layer) const {
  if (layer < 0 || layer >= static_cast<int64_t>(layer_kv_heads.size()))
    return num_kv_heads;
  return layer_kv_heads[static_cast<size_t>(layer)];
}

int64_t TextLayerIndex(absl::string_view name) {
  constexpr absl::string_view kPrefix = "text.layers.";
  if (!absl::StartsWith(name, kPrefix)) return -1;
  name.remove_prefix(kPrefix.size());
  int64_t i = 0;
  size_t n = 0;
  while (n < name.size() && std::isdigit(static_cast<unsigned char>(name[n]))) {
    if (i > (int64_t{1} << 40)) return -1;
    i = i * 10 + (name[n] - '0');
    ++n;
  }
  if (n == 0 || n >= name.size() || name[n] != '.') return -1;
  return i;
}

absl::StatusOr<ParamSpec> LookupParam(absl::string_view name) {
  const std::string pattern = ToPattern(name);
  for (const ParamSpec& s : ParamTable()) {
    if (s.pattern == pattern) {
      ParamSpec out = s;
      out.name = std::string(name);
      return out;
    }
  }
  return absl::NotFoundError(
      absl::StrCat("parameter '", name, "' is not in the parameter table"));
}

absl::StatusOr<ShardLayout> ComputeShard(const ParamSpec& spec,
                                         const std::vector<int64_t>& shape,
                                         const ShardDims& dims, int tp,
                                         int rank) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", spec.name, "': cannot split ", tp, " ways: ", why));
  };
  if (tp < 1 || rank < 0 || rank >= tp)
    return bad(absl::StrCat("bad rank ", rank));
  ShardLayout l;
  l.shard_shape = shape;
  const int64_t rows = shape.empty() ? 1 : shape[0];
  switch (spec.split) {
    case SplitKind::kReplicated:
    case SplitKind::kExperts:  // replicated over TP
      l.ranges = {{0, rows}};
      return l;
    case SplitKind::kRows: {
      if (shape.empty()) return bad("scalar");
      if (!spec.kv_groups) {
        if (rows % tp != 0) return bad(absl::StrCat(rows, " rows"));
        const int64_t per = rows / tp;
        l.ranges = {{rank * per, (rank + 1) * per}};
        l.shard_shape[0] = per;
        return l;
      }
      return KvGroupShard(spec, shape, dims, tp, rank, bad);
    }
    case SplitKind::kRowBlocks: {
      if (shape.empty() || spec.blocks < 1 || rows % spec.blocks != 0)
        return bad("rows not in equal blocks");
      const int64_t block = rows / spec.blocks;
      if (block % tp != 0)
        return bad(absl::StrCat("block of ", block, " rows"));
      const int64_t per = block / tp;
      for (int k = 0; k < spec.blocks; ++k) {
        l.ranges.push_back(
            {k * block + rank * per, k * block + (rank + 1) * per});
      }
      l.shard_shape[0] = per * spec.blocks;
      return l;
    }
    case SplitKind::kCols: {
      if (shape.size() != 2) return bad("column split needs a 2-D tensor");
      if (shape[1] % tp != 0) return bad(absl::StrCat(shape[1], " columns"));
      const int64_t per = shape[1] / tp;
      l.dim = 1;
      l.ranges = {{rank * per, (rank + 1) * per}};
      l.shard_shape[1] = per;
      return l;
    }
    case SplitKind::kVocabRows: {
      if (shape.empty()) return bad("scalar");
      const int64_t padded = (rows + tp - 1) / tp * tp;
      const int64_t per = padded / tp;
      l.ranges = {{rank * per, (rank + 1) * per}};
      l.shard_shape[0] = per;
      l.padded_rows = padded - rows;
      return l;
    }
  }
  return bad("unknown split");
}

absl::StatusOr<ShardLayout> ComputeLocalShard(const ParamSpec& spec,
                                              const std::vector<int64_t>& shape,
                                              const ShardDims& dims,
                                              const CheckpointLayout& layout,
                                              int tp_index, int ep_index) {
  if (layout.tp < 1 || layout.ep < 1 || tp_index < 0 || tp_index >= layout.tp ||
      ep_index < 0 || ep_index >= layout.ep) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", spec.name, "': bad TP rank ", tp_index, " / EP rank ",
        ep_index, " of tp ", layout.tp, " x ep ", layout.ep));
  }
  if (spec.split != SplitKind::kExperts) {
    return ComputeShard(spec, shape, dims, layout.tp, tp_index);
  }
  const int ep = layout.ep, i = ep_index;
  if (shape.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", spec.name, "': an expert tensor needs a dim 0 of experts"));
  }
  if (shape[0] % ep != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", spec.name, "': cannot split its ", shape[0],
                     " experts over ep ", ep, " (not a divisor)"));
  }
  const int64_t per = shape[0] / ep;
  ShardLayout l;
  l.shard_shape = shape;
  l.shard_shape[0] = per;
  l.ranges = {{i * per, (i + 1) * per}};
  return l;
}

absl::StatusOr<ShardLayout> ComputeLayoutShard(
    const ParamSpec& spec, const std::vector<int64_t>& shape,
    const ShardDims& dims, const CheckpointLayout& layout, int rank) {
  if (layout.tp < 1 || layout.ep < 1 || rank < 0 || rank >= layout.world()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", spec.name, "': bad rank ", rank, " of tp ",
                     layout.tp, " x ep ", layout.ep));
  }
  return ComputeLocalShard(spec, shape, dims, layout, layout.tp_index(rank),
                           layout.ep_index(rank));
}

bool StoresShard(const ParamSpec& spec, const CheckpointLayout& layout,
                 int rank) {
  if (rank < 0) return false;
  return spec.split == SplitKind::kExperts ? rank < layout.ep
                                           : rank < layout.tp;
}

int64_t VirtualTensor::rows() const { return shape.empty() ? 1 : shape[0]; }

int64_t VirtualTensor::cols() const {
  int64_t c = 1;
  for (size_t i = 1; i < shape.size(); ++i) c *= shape[i];
  return c;
}

VirtualTensor VirtualTensor::Contiguous(const uint8_t* data,
                                        std::vector<int64_t> shape,
                                        size_t elem_size) {
  VirtualTensor v;
  v.shape = std::move(shape);
  v.elem_size = elem_size;
  v.AddRows(0, v.rows(), data);
  return v;
}

void VirtualTensor::AddRows(int64_t row0, int64_t nrows, const uint8_t* data) {
  if (nrows <= 0) return;
  const int64_t c = cols();
  blocks.push_back(
      {row0, row0 + nrows, 0, c, data, c * static_cast<int64_t>(elem_size)});
}

void VirtualTensor::AddShard(const ShardLayout& layout, const uint8_t* data) {
  const int64_t esize = static_cast<int64_t>(elem_size);
  if (layout.dim == 0) {
    const int64_t row_bytes = cols() * esize, c = cols();
    // Rows already held by full-width blocks, sorted and merged.
    std::vector<std::pair<int64_t, int64_t>> covered;
    for (const Block& blk : blocks) {
      if (blk.col0 == 0 && blk.col1 == c)
        covered.push_back({blk.row0, blk.row1});
    }
    std::sort(covered.begin(), covered.end());
    int64_t off = 0;
    for (auto [b, e] : layout.ranges) {
      const int64_t end = std::min(e, rows());
      int64_t r = b;  // add [r, end) less the covered rows
      for (auto [cb, ce] : covered) {
        if (ce <= r) continue;
        if (cb >= end) break;
        if (cb > r) AddRows(r, cb - r, data + (off + r - b) * row_bytes);
        r = std::max(r, ce);
      }
      if (r < end) AddRows(r, end - r, data + (off + r - b) * row_bytes);
      off += e - b;
    }
    return;
  }
  int64_t shard_cols = 0;
  for (auto [b, e] : layout.ranges) shard_cols += e - b;
  int64_t off = 0;
  for (auto [b, e] : layout.ranges) {
    blocks.push_back({0, rows(), b, e, data + off * esize, shard_cols * esize});
    off += e - b;
  }
}

void Prefetch(const VirtualTensor& src, const ShardLayout& layout) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const int64_t esize = static_cast<int64_t>(src.elem_size);
  for (const auto& blk : src.blocks) {
    int64_t r0 = blk.row0, r1 = blk.row1;
    if (layout.dim == 0) {  // only the rows some range needs
      int64_t lo = r1, hi = r0;
      for (auto [b, e] : layout.ranges) {
        lo = std::min(lo, std::max(b, blk.row0));
        hi = std::max(hi, std::min(e, blk.row1));
      }
      if (lo >= hi) continue;
      r0 = lo;
      r1 = hi;
    }
    const uintptr_t begin = reinterpret_cast<uintptr_t>(
        blk.base + (r0 - blk.row0) * blk.row_stride);
    const uintptr_t end =
        begin + static_cast<uintptr_t>((r1 - r0 - 1) * blk.row_stride +
                                       (blk.col1 - blk.col0) * esize);
    const uintptr_t aligned = begin / page * page;
    (void)::madvise(reinterpret_cast<void*>(aligned), end - aligned,
                    MADV_WILLNEED);
  }
}

int64_t ShardBytes(const ShardLayout& layout, size_t elem_size) {
  int64_t n = static_cast<int64_t>(elem_size);
  for (int64_t d : layout.shard_shape) n *= d;
  return n;
}

absl::Status CopyShard(const VirtualTensor& src, const ShardLayout& layout,
                       uint8_t* dst) {
  const int64_t esize = static_cast<int64_t>(src.elem_size);
  const int64_t rows = src.rows(), cols = src.cols();
  int64_t copied = 0, expected = 0;
  if (layout.dim == 0) {
    const int64_t row_bytes = cols * esize;
    int64_t out_row = 0;
    for (auto [b, e] : layout.ranges) {
      const int64_t real_end = std::min(e, rows);
      expected += std::max<int64_t>(real_end - b, 0) * cols;
      for (const auto& blk : src.blocks) {
        const int64_t r0 = std::max(b, blk.row0),
                      r1 = std::min(real_end, blk.row1);
        if (r0 >= r1) continue;
        uint8_t* out = dst + (out_row + r0 - b) * row_bytes + blk.col0 * esize;
        const uint8_t* in = blk.base + (r0 - blk.row0) * blk.row_stride;
        const int64_t n = (blk.col1 - blk.col0) * esize;
        if (blk.col0 == 0 && blk.col1 == cols && blk.row_stride == row_bytes) {
          std::memcpy(out, in, static_cast<size_t>((r1 - r0) * row_bytes));
        } else {
          for (int64_t r = r0; r < r1; ++r) {
            std::memcpy(out, in, static_cast<size_t>(n));
            out += row_bytes;
            in += blk.row_stride;
          }
        }
        copied += (r1 - r0) * (blk.col1 - blk.col0);
      }
      if (e > real_end) {
        std::memset(
            dst + (out_row + real_end - b) * row_bytes, 0,
            static_cast<size_t>((e - std::max(real_end, b)) * row_bytes));
      }
      out_row += e - b;
    }
  } else {
    int64_t shard_cols = 0;
    for (auto [b, e] : layout.ranges) shard_cols += e - b;
    const int64_t out_stride = shard_cols * esize;
    int64_t out_col = 0;
    for (auto [b, e] : layout.ranges) {
      expected += rows * (e - b);
      for (const auto& blk : src.blocks) {
        const int64_t c0 = std::max(b, blk.col0), c1 = std::min(e, blk.col1);
        if (c0 >= c1) continue;
        const int64_t n = (c1 - c0) * esize;
        uint8_t* out = dst + blk.row0 * out_stride + (out_col + c0 - b) * esize;
        const uint8_t* in = blk.base + (c0 - blk.col0) * esize;
        for (int64_t r = blk.row0; r < blk.row1; ++r) {
          std::memcpy(out, in, static_cast<size_t>(n));
          out += out_stride;
          in += blk.row_stride;
        }
        copied += (blk.row1 - blk.row0) * (c1 - c0);
      }
      out_col += e - b;
    }
  }
  if (copied != expected) {
    return absl::InternalError(absl::StrCat(
        "source pieces cover ", copied, " of ", expected, " elements needed"));
  }
  return absl::OkStatus();
}

absl::Status CopyRows(const VirtualTensor& src,
                      const std::vector<std::pair<int64_t, int64_t>>& ranges,
                      uint8_t* dst) {
  ShardLayout l;
  l.dim = 0;
  l.ranges = ranges;
  return CopyShard(src, l, dst);
}

}  // namespace gemma
