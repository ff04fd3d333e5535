// AdamW with fp32 master weights, as torch.optim.AdamW computes it.
//
// Per parameter p with gradient g, at step t (1-based), learning rate lr:
//   p   *= 1 - lr * wd                      (decoupled weight decay)
//   m    = lerp(m, g, 1 - beta1)
//   v    = beta2 * v + (1 - beta2) * g * g
//   p   -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// in that order and with those roundings (torch.optim.AdamW, foreach=False),
// so results match PyTorch's to the last bit on the same inputs.
//
// Weight decay: none for 1-D parameters (every norm weight and bias), the
// configured value for the rest. transformers' Trainer does the same in
// effect: get_decay_parameter_names() excludes biases and every parameter of
// a norm layer (by class and by the names "norm"/"layernorm"/"rmsnorm"), and
// in Gemma 3 those are exactly the 1-D parameters; the tied embedding is
// decayed in both.
//
// Parameters whose dtype is not fp32 (bf16 compute) get an fp32 master copy:
// the update runs on the master and the result is rounded into the parameter.
// Parameters without a gradient at a step are skipped (as PyTorch does).
// Not thread-safe.
#ifndef GEMMA_JOBS_OPTIMIZER_H_
#define GEMMA_JOBS_OPTIMIZER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace gemma {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

// The scalars of one AdamW step (1-based `step`, rate `lr`), computed once
// and shared by every tensor the step updates.
struct AdamWStepScalars {
  AdamWStepScalars(const AdamWOptions& options, int64_t step, double lr);
  double lr;
  double beta1, beta2, eps, weight_decay;
  double step_size;   // lr / (1 - beta1^step)
  double bias2_sqrt;  // sqrt(1 - beta2^step)
};

// The update of one tensor (or any piece of one: the math is per element):
// `master`, `exp_avg`, `exp_avg_sq` (fp32, same shape as `grad`) updated in
// place from `grad` (any float dtype; fp32 math); `decay` says whether the
// weight decay applies. The caller copies `master` into a non-fp32
// parameter. AdamW and the sharded optimizer (jobs/dist_optimizer.h) both
// call this, so they agree to the bit on the same gradients.
void AdamWUpdate(const AdamWStepScalars& s, bool decay, const at::Tensor& grad,
                 at::Tensor& master, at::Tensor& exp_avg,
                 at::Tensor& exp_avg_sq);

// Restores optimizer state all or nothing: Take checks each saved tensor
// against the tensor it goes into, Apply copies them once every Take passed.
class StateLoader {
 public:
  // `state` must outlive the loader.
  explicit StateLoader(const std::map<std::string, at::Tensor>& state)
      : state_(state) {}
  // Stages state[key] for `to` (kept by reference, as tensors are).
  // InvalidArgument "optimizer state: ..." naming `key` when it is missing or
  // shaped differently.
  absl::Status Take(const std::string& key, const at::Tensor& to);
  // Copies every staged tensor into its destination.
  void Apply();

 private:
  const std::map<std::string, at::Tensor>& state_;
  std::vector<std::pair<at::Tensor, at::Tensor>> copies_;  // (to, from)
};

class AdamW {
 public:
  // `params` are the trainable parameters by name (the tensors are kept and
  // updated in place).
  AdamW(std::vector<std::pair<std::string, at::Tensor>> params,
        AdamWOptions options);

  // One update with learning rate `lr` from the parameters' .grad().
  void Step(double lr);
  // The same, leaving parameter i (constructor order) alone where
  // !update[i], as if it had no gradient.
  void Step(double lr, const std::vector<bool>& update);

  // Steps taken so far (PyTorch's state["step"]).
  int64_t steps() const { return steps_; }
  const AdamWOptions& options() const { return options_; }
  // Whether parameter `name` (shape of `p`) gets weight decay.
  static bool Decays(const std::string& name, const at::Tensor& p);

  // The state to checkpoint: "exp_avg/<name>", "exp_avg_sq/<name>" and, for
  // non-fp32 parameters, "master/<name>" (all fp32 CPU tensors).
  std::map<std::string, at::Tensor> StateTensors() const;
  // Restores what StateTensors() gave at `steps`. InvalidArgument naming the
  // tensor when one is missing or shaped differently.
  absl::Status LoadState(const std::map<std::string, at::Tensor>& state,
                         int64_t steps);

 private:
  struct Slot {
    std::string name;
    at::Tensor param;
    at::Tensor master;  // == param when fp32
    at::Tensor exp_avg;
    at::Tensor exp_avg_sq;
    bool decay = true;
  };
  AdamWOptions options_;
  std::vector<Slot> slots_;
  int64_t steps_ = 0;
};

}  // namespace gemma

#endif  // GEMMA_JOBS_OPTIMIZER_H_
