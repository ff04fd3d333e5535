#include "jobs/schedule.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace gemma {

double LrSchedule::At(int64_t step) const {
  if (step < warmup_steps) {
    return lr * static_cast<double>(step) /
           static_cast<double>(std::max<int64_t>(1, warmup_steps));
  }
  if (kind == Kind::kConstant) return lr;
  double p =
      static_cast<double>(step - warmup_steps) /
      static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  p = std::clamp(p, 0.0, 1.0);
  const double decay =
      kind == Kind::kCosine ? 0.5 * (1.0 + std::cos(M_PI * p)) : 1.0 - p;
  return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * decay);
}

absl::StatusOr<LrSchedule::Kind> LrSchedule::ParseKind(
    const std::string& name) {
  if (name.empty() || name == "cosine") return Kind::kCosine;
  if (name == "linear") return Kind::kLinear;
  if (name == "constant") return Kind::kConstant;
  return absl::InvalidArgumentError(absl::StrCat(
      "optim.schedule: must be cosine, linear or constant, got '", name, "'"));
}

}  // namespace gemma
