// Gang placement: which free workers an attempt's ranks go to, or why none.
// Pure functions of the cluster's state; the Scheduler in ControlState calls
// them (and tests call them without sockets).
#ifndef GEMMA_COORDINATOR_PLACEMENT_H_
#define GEMMA_COORDINATOR_PLACEMENT_H_

#include <string>
#include <vector>

#include "gemma/v1/cluster.pb.h"
#include "gemma/v1/job_spec.pb.h"

namespace gemma {

struct PlacementResult {
  // Worker names by rank (size world) when placed; empty otherwise.
  std::vector<std::string> workers;
  // Nothing attached could ever hold this job (it does not block the queue).
  bool impossible = false;
  // Why it was not placed ("needs 4 cpu workers (tp=2 x dp=2); 3 free of 4").
  std::string reason;
};

// True when `w` has the device and memory `spec` asks for.
bool WorkerFits(const gemma::v1::Worker& w, const gemma::v1::JobSpec& spec);

// Places all tp*dp ranks at once or none. Each TP group (tp consecutive ranks)
// lands on one host. `attached` are all attached workers; those with a
// non-empty job() are busy. Deterministic: hosts and workers in name order.
PlacementResult PlaceGang(
    const gemma::v1::JobSpec& spec,
    const std::vector<const gemma::v1::Worker*>& attached);

}  // namespace gemma

#endif  // GEMMA_COORDINATOR_PLACEMENT_H_
