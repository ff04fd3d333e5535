// LoRA and DoRA adapters on one Projection (model/layers.h's adapter slot),
// as peft 0.21 computes them. No job or proto types: the GPU model-only
// build and the benchmarks use them directly; model/lora.h attaches them to a
// model from a PeftSpec, saves, merges and exports them.
#ifndef GEMMA_MODEL_LORA_ADAPTER_H_
#define GEMMA_MODEL_LORA_ADAPTER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "model/layers.h"

namespace gemma {

// The name of the Projection adapter slot adapters are attached under.
inline constexpr char kLoraSlot[] = "lora";

// LoRA on one projection: parameters "a" [r, in] and "b" [out, r].
//
// On a tensor-parallel shard (`split`, the projection's tp_split; in / out
// are then the shard's, as the weight's) the adapter splits as Megatron /
// NeMo split LoRA:
//   column-parallel: A [r, in] whole on every rank (its gradient is partial:
//     each rank sees only its output rows), B [out_local, r] the weight
//     shard's rows;
//   row-parallel: A [r, in_local] the weight shard's columns, B [out, r]
//     whole (gradient partial); s B A_local x_local is a partial output,
//     summed with W_local x_local by the layer's ReduceFromTpRegion.
// A is drawn whole ([r, split.in], the same draws as without TP) and then
// sliced, so every TP layout starts from the TP = 1 adapter's shards. B rows
// held by several ranks (Gemma 4 KV heads replicated over ranks) get their
// gradient summed over those ranks by a hook, as the weight's. Dropout on a
// row-parallel input draws the whole input's mask and keeps this rank's
// columns: on the CPU the mask the TP = 1 adapter draws (on CUDA, whose
// fused dropout draws differently, an equally distributed one).
class LoraAdapter : public ProjectionAdapter {
 public:
  LoraAdapter(int64_t in_features, int64_t out_features, int64_t rank,
              double alpha, double dropout, ProjectionSplit split = {});
  torch::Tensor Forward(const torch::Tensor& x, const torch::Tensor& weight,
                        const torch::Tensor& bias) override;
  // s * B A [out, in] (in B's dtype), the update merging adds to W.
  torch::Tensor DeltaWeight() const;
  // The weight a merge leaves in the projection (LoRA: W + s B A; DoRA:
  // m / ||W + s B A||_row * (W + s B A)), in `weight`'s dtype; on a TP shard
  // the shard of the whole merged weight.
  virtual torch::Tensor MergedWeight(const torch::Tensor& weight) const;

  int64_t rank;
  double scaling;
  double dropout;
  ProjectionSplit split;  // the projection's (kNone: not split)
  torch::Tensor a;        // [r, in]
  torch::Tensor b;        // [out, r]

 protected:
  // drop(x) in train mode with dropout > 0, else x.
  torch::Tensor Dropped(const torch::Tensor& x);
};

// DoRA: LoRA plus the magnitude "m" [out], initialised to ||W||_row (of the
// whole weight). The weight norm ||W + s B A||_row is detached, as in peft.
//
// On a tensor-parallel shard A and B split as LoRA's above, and:
//   column-parallel: the shard holds whole rows, so the norms are local; m
//     [out_local] is the shard's rows, like B (rows replicated on several
//     ranks get their gradient summed over those ranks by a hook);
//   row-parallel: every rank holds some columns of every row; the norms are
//     the square roots of the per-row sums of squares of the local columns
//     summed over split.comm (a collective in the constructor, Forward and
//     MergedWeight: every rank of the group calls them together); m [out] is
//     whole on every rank and its gradient partial. mag = m / norm is then
//     the same on every rank and multiplies the partial outputs, which the
//     layer sums afterwards (see Forward).
// Either way the initial m is the TP = 1 m's shard (row-parallel: up to the
// order of the fp32 sums).
class DoraAdapter : public LoraAdapter {
 public:
  // `base_weight`: the projection's weight (under TP its shard, `split` the
  // projection's tp_split).
  DoraAdapter(const torch::Tensor& base_weight, int64_t rank, double alpha,
              double dropout, ProjectionSplit split = {});
  torch::Tensor Forward(const torch::Tensor& x, const torch::Tensor& weight,
                        const torch::Tensor& bias) override;
  torch::Tensor MergedWeight(const torch::Tensor& weight) const override;

  torch::Tensor m;  // [out] (column-parallel: [out_local])
};

}  // namespace gemma

#endif  // GEMMA_MODEL_LORA_ADAPTER_H_
