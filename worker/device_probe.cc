#include "worker/device_probe.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include <torch/cuda.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

std::string HostName() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

int64_t HostMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
}

int LocalRankFromEnv() {
  for (const char* var : {"SLURM_LOCALID", "LOCAL_RANK"}) {
    const char* v = std::getenv(var);
    int r = 0;
    if (v != nullptr && absl::SimpleAtoi(v, &r)) return r;
  }
  return 0;
}

}  // namespace

absl::StatusOr<gemma::v1::Worker> ProbeDevice(const std::string& spec, int cpu_slots) {
  gemma::v1::Worker w;
  w.set_host(HostName());
  w.set_pid(getpid());
  w.set_cpu_slots(cpu_slots);
  if (const char* job = std::getenv("SLURM_JOB_ID")) w.set_slurm_job_id(job);
  if (const char* procid = std::getenv("SLURM_PROCID")) {
    int p = 0;
    if (absl::SimpleAtoi(procid, &p)) w.set_slurm_procid(p);
  }
  const int gpus = static_cast<int>(torch::cuda::device_count());
  int index = -1;
  if (spec == "auto") {
    if (gpus > 0) index = LocalRankFromEnv() % gpus;
  } else if (spec == "cpu") {
    index = -1;
  } else if (absl::StartsWith(spec, "cuda:")) {
    if (!absl::SimpleAtoi(spec.substr(5), &index) || index < 0) {
      return absl::InvalidArgumentError(absl::StrCat("--device: bad GPU index in '", spec, "'"));
    }
    if (index >= gpus) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--device ", spec, ": this machine has ", gpus, " visible GPU(s)"));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--device: '", spec, "' is not auto, cpu or cuda:N"));
  }
  if (index >= 0) {
    w.set_device_kind("cuda");
    w.set_device_index(index);
  } else {
    w.set_device_kind("cpu");
    w.set_device_index(-1);
    w.set_memory_bytes(HostMemoryBytes());
  }
  return w;
}

}  // namespace gemma
