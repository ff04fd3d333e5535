// Learning-rate schedules for the trainers: linear warmup from 0, then
// cosine, linear or constant.
//
// Shape (step s counts optimizer steps from 0; the rate used for step s):
//   s < warmup:  lr * s / max(1, warmup)           (as transformers)
//   cosine:      lr * (m + (1 - m) * 0.5 * (1 + cos(pi * p)))
//   linear:      lr * (m + (1 - m) * (1 - p))
//   constant:    lr
// with p = (s - warmup) / max(1, total - warmup) clamped to [0, 1] and m =
// min_lr_ratio. With m = 0 these are exactly transformers'
// get_cosine_schedule_with_warmup (num_cycles 0.5) and
// get_linear_schedule_with_warmup; m > 0 lifts the floor to lr * m (the
// reference recipes decay "to 10%").
#ifndef GEMMA_JOBS_SCHEDULE_H_
#define GEMMA_JOBS_SCHEDULE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace gemma {

struct LrSchedule {
  enum class Kind { kCosine, kLinear, kConstant };
  Kind kind = Kind::kCosine;
  double lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.0;

  // The learning rate of optimizer step `step` (0-based).
  double At(int64_t step) const;

  // "cosine" (also ""), "linear", "constant"; InvalidArgument naming
  // optim.schedule otherwise.
  static absl::StatusOr<Kind> ParseKind(const std::string& name);
};

}  // namespace gemma

#endif  // GEMMA_JOBS_SCHEDULE_H_
