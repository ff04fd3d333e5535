// The communicator of a job's ranks: model/comm.h's `Comm` on LibTorch c10d
// (Gloo on CPU, NCCL on CUDA when built with GEMMA_WITH_CUDA), a c10d
// TCPStore for the rendezvous, and the world/tp/dp/ep groups of one rank.
//
//   // rank 0's worker, before the ranks start:
//   auto store = RendezvousStore::Serve("127.0.0.1", 0, world);
//   report store->address() to the coordinator, which passes it to every rank;
//   // every rank:
//   GEMMA_ASSIGN_OR_RETURN(ParallelGroups g,
//       MakeParallelGroups({addr, rank, world, layout, "cpu"}));
//   g.tp->AllReduceSum(t);
//
// Layout: TP fastest, rank = dp_index * tp + tp_index. A rank's tp group is
// the tp ranks with its dp_index; its dp group the dp ranks with its tp_index;
// its ep group the `ep` consecutive ranks of its block (world % ep == 0; with
// tp > 1 the block spans TP groups: MoE parallel folding), so with ep = world
// the ep group is the world; its edp group the ranks with the same rank % ep.
//
// Failure: collectives throw c10::Error when a peer dies (its sockets close)
// or after `timeout` without progress; Comm::Abort() (from any thread) makes
// pending and later collectives of that group throw at once.
//
// This header is LibTorch-light (ATen/core/Tensor.h through model/comm.h);
// the c10d and Gloo headers stay inside comm.cc.
#ifndef GEMMA_WORKER_COMM_H_
#define GEMMA_WORKER_COMM_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "model/comm.h"

namespace gemma {

struct RankContext;

// A c10d TCPStore: the key-value store ranks rendezvous through. Thread-safe.
class RendezvousStore {
 public:
  // Opens the server on host:port (port 0 picks a free one) for `world`
  // clients; does not wait for them.
  static absl::StatusOr<std::shared_ptr<RendezvousStore>> Serve(
      const std::string& host, int port, int world,
      absl::Duration timeout = absl::Seconds(120));
  // Connects to "host:port" as a client (retries until `timeout`).
  static absl::StatusOr<std::shared_ptr<RendezvousStore>> Connect(
      const std::string& address, absl::Duration timeout = absl::Seconds(120));
  ~RendezvousStore();

  std::string host() const;
  int port() const;
  std::string address() const { return host() + ":" + std::to_string(port()); }

  struct Impl;
  Impl* impl() const { return impl_.get(); }

 private:
  friend class RendezvousStoreFactory;
  explicit RendezvousStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct ParallelLayout {
  int tp = 1;
  int dp = 1;
  int ep = 1;
};

struct GroupsOptions {
  std::string store_address;  // "host:port" of the RendezvousStore
  int rank = 0;
  int world = 1;
  ParallelLayout layout;       // tp * dp must equal world
  std::string device = "cpu";  // "cpu" (Gloo) or "cuda:N" (NCCL)
  // Namespace inside the store, so several attempts or jobs can share one
  // store (e.g. "jobs/x/attempt/3").
  std::string prefix;
  // How long a collective or the group setup waits for its peers.
  absl::Duration timeout = absl::Seconds(300);
};

// Checks the layout: positive sizes, tp * dp == world, dp % ep == 0.
absl::Status ValidateLayout(const ParallelLayout& layout, int world);

// Connects to the store and builds this rank's world/tp/dp/ep groups (a group
// of one rank is a SingleRankComm). Blocks until every member of each group
// has joined, or fails after `timeout`.
absl::StatusOr<ParallelGroups> MakeParallelGroups(const GroupsOptions& options);

// The groups of a job's rank from what the worker put in its RankContext
// (store address, layout, attempt; see jobs/job.h). A one-rank attempt, or a
// context without a store, gets SingleRankComm groups.
absl::StatusOr<ParallelGroups> MakeParallelGroups(const RankContext& ctx);

// Aborts every distinct communicator in `groups` (safe to call twice).
void AbortGroups(const ParallelGroups& groups);

// For tests and benchmarks: runs `fn(rank, groups)` on `n` real Gloo ranks,
// one thread each, over a real TCPStore on 127.0.0.1. If a rank returns an
// error (or throws), the other ranks' groups are aborted so none hangs.
// Returns the first error (by rank), else OK. Layout defaults to dp = n.
// Sets TORCH_FR_BUFFER_SIZE=0 unless set (c10d's flight recorder is not
// safe with ranks as threads; see comm.cc).
absl::Status RunGlooRanks(
    int n,
    const std::function<absl::Status(int rank, ParallelGroups& groups)>& fn,
    ParallelLayout layout = {}, absl::Duration timeout = absl::Seconds(120));

}  // namespace gemma

#endif  // GEMMA_WORKER_COMM_H_
