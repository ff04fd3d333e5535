// Checks and small helpers on the API's messages, shared by the coordinator
// (which must refuse bad specs) and gemmactl (which checks before sending).
// Control plane only: no LibTorch.
#ifndef GEMMA_PROTO_SPEC_CHECK_H_
#define GEMMA_PROTO_SPEC_CHECK_H_

#include <string>

#include "absl/status/status.h"
#include "gemma/v1/jobs.pb.h"

namespace gemma {

// Ranks of one attempt: tp * dp (0 counts as 1).
int WorldSize(const gemma::v1::JobSpec& spec);

// OK, or INVALID_ARGUMENT whose message starts with the field path
// ("spec.parallel.ep: 3 does not divide world size 4"). Checks the layout,
// resources, policies, timeouts and the fields each kind requires.
absl::Status ValidateJobSpec(const gemma::v1::JobSpec& spec);

// Fills defaults that the spec leaves at zero (tp/ep/dp = 1, device = gpu,
// diagnose steps/size, metric mode), so stored specs are explicit.
void ApplySpecDefaults(gemma::v1::JobSpec* spec);

// "RUNNING", "sft", "gpu", "WORKER_LOST": enum names without their prefix.
std::string StateName(gemma::v1::JobState state);
std::string KindName(gemma::v1::JobKind kind);
std::string DeviceName(gemma::v1::Device device);
std::string ReasonName(gemma::v1::FailureReason reason);

// SUCCEEDED, FAILED or CANCELLED.
bool IsTerminal(gemma::v1::JobState state);

// "jobs/abc" -> true; the id part must be [a-z0-9-], 1..63 chars.
bool IsValidJobId(const std::string& id);

}  // namespace gemma

#endif  // GEMMA_PROTO_SPEC_CHECK_H_
