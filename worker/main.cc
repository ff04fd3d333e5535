// gemma-worker: one process per GPU (or CPU slot); runs one rank of a job.

#include "common/flags.h"
#include "common/log.h"
#include "common/signals.h"
#include "jobs/registry.h"
#include "worker/comm.h"
#include "worker/device_probe.h"
#include "worker/session.h"

int main(int argc, char** argv) {
  gemma::SetLogTag("worker");
  gemma::SessionOptions options;
  std::string device = "auto";
  int cpu_slots = 1;
  gemma::FlagSet flags(
      "gemma-worker",
      "Attaches this process to a gemma-coordinator and runs the job ranks it\n"
      "is assigned on one GPU (or on CPU slots where no GPU is visible).");
  flags
      .String("coordinator", &options.coordinator,
              "the coordinator's gRPC address")
      .Meta("HOST:PORT")
      .Env("GEMMA_COORDINATOR");
  flags
      .String(
          "device", &device,
          "auto (GPU by SLURM_LOCALID/LOCAL_RANK, else CPU), cpu, or cuda:N")
      .Env("GEMMA_DEVICE");
  flags.Int("cpu-slots", &cpu_slots, "CPU slots this worker offers");
  std::string rendezvous_host;
  flags
      .String("rendezvous-host", &rendezvous_host,
              "address other ranks reach this host's c10d store on (default: "
              "127.0.0.1 when the coordinator is on loopback, else the host "
              "name)")
      .Env("GEMMA_RENDEZVOUS_HOST");
  flags.Epilog(
      "Examples:\n"
      "  gemma-worker --coordinator 127.0.0.1:7450 --device cpu\n"
      "  srun --ntasks-per-node=8 --gpus-per-task=1 gemma-worker --coordinator "
      "head:7450");
  if (auto exit_code = flags.ParseOrExit(argc, argv)) return *exit_code;
  auto self = gemma::ProbeDevice(device, cpu_slots);
  if (!self.ok()) return flags.UsageError(self.status().message());
  if (rendezvous_host.empty()) {
    const std::string& c = options.coordinator;
    rendezvous_host = (c.rfind("127.0.0.1:", 0) == 0 || c.rfind("localhost:", 0) == 0)
                          ? "127.0.0.1"
                          : self->host();
  }
  options.open_store =
      [rendezvous_host](int world) -> absl::StatusOr<gemma::OpenedStore> {
    auto store = gemma::RendezvousStore::Serve(rendezvous_host, 0, world);
    if (!store.ok()) return store.status();
    return gemma::OpenedStore{*store, (*store)->address()};
  };
  const sigset_t signals = gemma::BlockTerminationSignals();

  gemma::WorkerSessionClient session(options, *self,
                                     &gemma::JobRegistry::Default());
  gemma::OnTerminationSignal(signals, [&](int sig) {
    GEMMA_LOG(INFO) << "signal " << sig << ": detaching";
    session.Stop();
  }).detach();
  GEMMA_LOG(INFO) << "device " << self->device_kind()
                  << (self->device_index() >= 0
                          ? ":" + std::to_string(self->device_index())
                          : std::string())
                  << ", coordinator " << options.coordinator;
  session.Run();
  return 0;
}
