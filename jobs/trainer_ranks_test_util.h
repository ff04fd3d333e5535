// Test helper: a Trainer per rank on real Gloo ranks (threads, real
// TCPStore, worker/comm.h's RunGlooRanks), each running some steps and
// optionally saving a checkpoint, with what each rank saw.
#ifndef GEMMA_JOBS_TRAINER_RANKS_TEST_UTIL_H_
#define GEMMA_JOBS_TRAINER_RANKS_TEST_UTIL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "jobs/trainer.h"
#include "worker/comm.h"

namespace gemma {

// Indexed by world rank.
struct TrainerRun {
  std::vector<int64_t> start_step;  // the step each trainer resumed at
  std::vector<int> tp_rank;
  std::vector<std::vector<double>> losses;                 // per step run
  std::vector<std::map<std::string, at::Tensor>> weights;  // after the steps
  std::vector<std::string> saved;  // the step folder (with `save`)
};

// Runs `steps` steps of `spec` on tp x dp ranks of `layout` with checkpoints
// under `root`, then (with `save`) SaveCheckpoint(). The first rank error.
inline absl::Status RunTrainerRanks(
    const gemma::v1::JobSpec& spec, const std::string& root,
    ParallelLayout layout, int steps, TrainerRun* out, bool save = false,
    absl::Duration timeout = absl::Seconds(120)) {
  const int n = layout.tp * layout.dp;
  out->start_step.assign(n, -1);
  out->tp_rank.assign(n, 0);
  out->losses.assign(n, {});
  out->weights.assign(n, {});
  out->saved.assign(n, "");
  return RunGlooRanks(
      n,
      [&](int rank, ParallelGroups& groups) -> absl::Status {
        TrainerOptions o;
        o.spec = spec;
        o.groups = groups;
        o.checkpoint_root = root;
        auto t = Trainer::Create(o);
        if (!t.ok()) return t.status();
        out->start_step[rank] = (*t)->step();
        out->tp_rank[rank] = groups.tp->rank();
        for (int i = 0; i < steps; ++i) {
          auto s = (*t)->Step();
          if (!s.ok()) return s.status();
          out->losses[rank].push_back(s->loss);
        }
        if (save) {
          auto saved = (*t)->SaveCheckpoint();
          if (!saved.ok()) return saved.status();
          out->saved[rank] = saved->first;
        }
        for (auto& p : (*t)->module().named_parameters())
          out->weights[rank][p.key()] = p.value().detach().clone();
        return absl::OkStatus();
      },
      layout, timeout);
}

}  // namespace gemma

#endif  // GEMMA_JOBS_TRAINER_RANKS_TEST_UTIL_H_
