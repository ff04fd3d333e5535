// The `diagnose` job kind: each rank multiplies two matrix_size^2 float
// matrices `steps` times on its device and reports its throughput (GFLOP/s)
// per step as progress. The control plane's tests use it as their workload.
// With checkpoint.interval_steps > 0 and checkpoint.root set, every interval
// it writes a small result file per rank and reports it as a checkpoint.
// With allreduce_bytes > 0 every step also all-reduces that many bytes over
// all ranks (worker/comm.h groups), checks the sum, and reports
// allreduce_ms and allreduce_busbw_gbps.
#ifndef GEMMA_JOBS_DIAGNOSE_H_
#define GEMMA_JOBS_DIAGNOSE_H_

#include <memory>

#include "jobs/job.h"

namespace gemma {

std::unique_ptr<Job> NewDiagnoseJob();

}  // namespace gemma

#endif  // GEMMA_JOBS_DIAGNOSE_H_
