// What this worker process can offer: a GPU (by index) or CPU slots.
#ifndef GEMMA_WORKER_DEVICE_PROBE_H_
#define GEMMA_WORKER_DEVICE_PROBE_H_

#include <string>

#include "absl/status/statusor.h"
#include "gemma/v1/cluster.pb.h"

namespace gemma {

// `spec` is "auto" (a GPU when one is visible, chosen by SLURM_LOCALID or
// LOCAL_RANK, else the CPU), "cpu", or "cuda:N". Fills device and host fields
// of a Worker message. INVALID_ARGUMENT for a bad spec or a missing GPU.
absl::StatusOr<gemma::v1::Worker> ProbeDevice(const std::string& spec, int cpu_slots);

}  // namespace gemma

#endif  // GEMMA_WORKER_DEVICE_PROBE_H_
