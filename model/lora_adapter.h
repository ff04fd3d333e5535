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
class LoraAdapter : public ProjectionAdapter {
 public:
  LoraAdapter(int64_t in_features, int64_t out_features, int64_t rank,
              double alpha, double dropout);
  torch::Tensor Forward(const torch::Tensor& x, const torch::Tensor& weight,
                        const torch::Tensor& bias) override;
  // s * B A [out, in] (in B's dtype), the update merging adds to W.
  torch::Tensor DeltaWeight() const;
  // The weight a merge leaves in the projection (LoRA: W + s B A; DoRA:
  // m / ||W + s B A||_row * (W + s B A)), in `weight`'s dtype.
  virtual torch::Tensor MergedWeight(const torch::Tensor& weight) const;

  int64_t rank;
  double scaling;
  double dropout;
  torch::Tensor a;  // [r, in]
  torch::Tensor b;  // [out, r]
};

// DoRA: LoRA plus the magnitude "m" [out], initialised to ||W||_row.
class DoraAdapter : public LoraAdapter {
 public:
  DoraAdapter(const torch::Tensor& base_weight, int64_t rank, double alpha,
              double dropout);
  torch::Tensor Forward(const torch::Tensor& x, const torch::Tensor& weight,
                        const torch::Tensor& bias) override;
  torch::Tensor MergedWeight(const torch::Tensor& weight) const override;

  torch::Tensor m;  // [out]
};

}  // namespace gemma

#endif  // GEMMA_MODEL_LORA_ADAPTER_H_
