// Comm on LibTorch c10d. See comm.h for the contract.
//
// About the Gloo headers: the torch wheel ships ProcessGroupGloo.hpp but not
// the gloo/ headers it includes. We compile against Debian's libgloo-dev
// headers (deploy/setup.sh installs it) and never link Debian's libgloo: every
// gloo symbol we reach is libtorch_cpu's own copy, called through c10d. That
// is sound because this file touches gloo only through c10d's exported API:
// ProcessGroupGloo's members name gloo types only behind shared_ptr /
// unique_ptr / vector (so its size and layout do not depend on the gloo
// version), the devices come from the exported
// ProcessGroupGloo::createDeviceFor*() factories, and every collective is a
// virtual call into libtorch. No gloo struct is created, read or inlined here.
#include "worker/comm.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef GEMMA_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "jobs/job.h"

namespace gemma {

struct RendezvousStore::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
  std::string host;
};

RendezvousStore::RendezvousStore(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
RendezvousStore::~RendezvousStore() = default;
std::string RendezvousStore::host() const { return impl_->host; }
int RendezvousStore::port() const { return impl_->store->getPort(); }

// RendezvousStore's factories need its private constructor.
class RendezvousStoreFactory {
 public:
  static std::shared_ptr<RendezvousStore> Make(
      std::unique_ptr<RendezvousStore::Impl> impl) {
    return std::shared_ptr<RendezvousStore>(
        new RendezvousStore(std::move(impl)));
  }
};

namespace {

std::chrono::milliseconds ToMs(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

absl::StatusOr<std::shared_ptr<RendezvousStore>> OpenStore(
    const std::string& host, int port, bool server, int world,
    absl::Duration timeout) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("rendezvous store: bad port ", port));
  }
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<uint16_t>(port);
  opts.isServer = server;
  if (server && world > 0) opts.numWorkers = world;
  opts.waitWorkers = false;
  opts.timeout = ToMs(timeout);
  try {
    auto impl = std::make_unique<RendezvousStore::Impl>();
    impl->host = host;
    impl->store = c10::make_intrusive<c10d::TCPStore>(host, opts);
    return RendezvousStoreFactory::Make(std::move(impl));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "rendezvous store ", server ? "serving on " : "connecting to ", host,
        ":", port, ": ", e.what()));
  }
}

// The abort state of one group, shared with its started works (which may
// outlive a Wait of the group's own).
struct AbortSignal {
  explicit AbortSignal(std::string backend) : backend(std::move(backend)) {}
  const std::string backend;
  std::atomic<bool> aborted{false};
  std::mutex mu;
  std::condition_variable cv;

  void CheckLive(const char* what) const {
    TORCH_CHECK(!aborted.load(), what, ": the ", backend, " group was aborted");
  }
};

void PollUntilDone(const c10::intrusive_ptr<c10d::Work>& work,
                   AbortSignal& signal, const char* what) {
  auto pause = std::chrono::microseconds(20);
  while (!work->isCompleted()) {
    std::unique_lock<std::mutex> lock(signal.mu);
    if (signal.cv.wait_for(lock, pause,
                           [&] { return signal.aborted.load(); })) {
      TORCH_CHECK(false, what, ": the ", signal.backend, " group was aborted");
    }
    pause = std::min(pause * 2, std::chrono::microseconds(2000));
  }
  work->wait();  // rethrows a failure
}

// Blocks until `work` is done or the group is aborted; rethrows its error.
void WaitWork(const c10::intrusive_ptr<c10d::Work>& work,
              const std::shared_ptr<AbortSignal>& signal, const char* what) {
  signal->CheckLive(what);
  if (signal->backend != "gloo") {
    work->wait();  // NCCL: pg_->abort() unblocks it
    signal->CheckLive(what);
    return;
  }
  c10::intrusive_ptr<c10::ivalue::Future> fut;
  try {
    fut = work->getFuture();
  } catch (const c10::Error&) {
    // Some Gloo works (e.g. reduce-scatter) have no future: poll.
    PollUntilDone(work, *signal, what);
    return;
  }
  fut->addCallback([signal](c10::ivalue::Future&) {
    { std::lock_guard<std::mutex> lock(signal->mu); }
    signal->cv.notify_all();
  });
  {
    std::unique_lock<std::mutex> lock(signal->mu);
    signal->cv.wait(lock,
                    [&] { return fut->completed() || signal->aborted.load(); });
  }
  if (!fut->completed()) {
    TORCH_CHECK(false, what, ": the ", signal->backend, " group was aborted");
  }
  work->wait();  // rethrows a failure (peer lost, timeout)
}

// A started c10d collective and what to do once it is done (copy a result
// into place). Keeps the tensors it works on alive until waited for.
class C10dWork : public CommWork {
 public:
  C10dWork(c10::intrusive_ptr<c10d::Work> work,
           std::shared_ptr<AbortSignal> signal, const char* what,
           std::function<void()> finish = nullptr)
      : work_(std::move(work)),
        signal_(std::move(signal)),
        what_(what),
        finish_(std::move(finish)) {}

  void Wait() override {
    if (done_) return;
    WaitWork(work_, signal_, what_);
    if (finish_) finish_();
    finish_ = nullptr;
    done_ = true;
  }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  std::shared_ptr<AbortSignal> signal_;
  const char* what_;
  std::function<void()> finish_;
  bool done_ = false;
};

class C10dComm : public Comm {
 public:
  C10dComm(c10::intrusive_ptr<c10d::Backend> pg, std::string backend, int rank,
           int size, c10::Device device = c10::Device(c10::kCPU))
      : pg_(std::move(pg)),
        backend_(std::move(backend)),
        rank_(rank),
        size_(size),
        device_(device),
        signal_(std::make_shared<AbortSignal>(backend_)) {}

  ~C10dComm() override {
    if (signal_->aborted.load()) {
      // A collective may still sit in a Gloo thread waiting for a dead or
      // stuck peer until its timeout; the backend's destructor joins those
      // threads. Let that happen off this thread.
      std::thread([pg = std::move(pg_)]() mutable { pg.reset(); }).detach();
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return backend_; }
  c10::Device device() const override { return device_; }

  void AllReduceSum(at::Tensor& t) override {
    AllReduce(t, c10d::ReduceOp::SUM);
  }
  void AllReduceMax(at::Tensor& t) override {
    AllReduce(t, c10d::ReduceOp::MAX);
  }

  at::Tensor AllGather(const at::Tensor& t, int64_t dim) override {
    CheckLive("AllGather");
    std::vector<at::Tensor> in{t.contiguous()};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < size_; ++r) out[0].push_back(at::empty_like(in[0]));
    Wait(pg_->allgather(out, in), "AllGather");
    return at::cat(out[0], dim);
  }

  void Broadcast(at::Tensor& t, int root) override {
    CheckLive("Broadcast");
    TORCH_CHECK(root >= 0 && root < size_, "Broadcast: root ", root,
                " outside a group of ", size_);
    std::vector<at::Tensor> buf{t.is_contiguous() ? t : t.contiguous()};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    Wait(pg_->broadcast(buf, opts), "Broadcast");
    if (!buf[0].is_same(t)) t.copy_(buf[0]);
  }

  at::Tensor ReduceScatterSum(const at::Tensor& t) override {
    CheckLive("ReduceScatterSum");
    TORCH_CHECK(t.dim() >= 1 && t.size(0) % size_ == 0,
                "ReduceScatterSum: dim 0 of ", t.sizes(),
                " does not split into ", size_, " equal parts");
    // Gloo's reduce-scatter work completes only inside a blocking wait()
    // (which Abort() cannot interrupt), so on Gloo this is an all-reduce and
    // a slice: twice the bytes of a ring reduce-scatter, but abortable.
    const int64_t part = t.size(0) / size_;
    if (backend_ == "gloo") {
      at::Tensor sum = t.clone(at::MemoryFormat::Contiguous);
      AllReduce(sum, c10d::ReduceOp::SUM);
      return sum.narrow(0, rank_ * part, part).clone();
    }
    at::Tensor in = t.contiguous();
    std::vector<int64_t> shape = in.sizes().vec();
    shape[0] = part;
    at::Tensor out = at::empty(shape, in.options());
    Wait(pg_->_reduce_scatter_base(out, in), "ReduceScatterSum");
    return out;
  }

  std::vector<at::Tensor> AllToAll(
      const std::vector<at::Tensor>& inputs) override {
    CheckLive("AllToAll");
    TORCH_CHECK(static_cast<int>(inputs.size()) == size_,
                "AllToAll: ", inputs.size(), " inputs for a group of ", size_);
    std::vector<at::Tensor> parts;
    std::vector<int64_t> send_counts;
    for (const at::Tensor& x : inputs) {
      TORCH_CHECK(x.dim() >= 1, "AllToAll: inputs need a dim 0");
      TORCH_CHECK(x.sizes().slice(1) == inputs[0].sizes().slice(1) &&
                      x.scalar_type() == inputs[0].scalar_type(),
                  "AllToAll: inputs differ beyond dim 0 or in dtype");
      parts.push_back(x.contiguous());
      send_counts.push_back(x.size(0));
    }
    // Exchange the row counts first, then the rows.
    at::Tensor counts =
        at::tensor(send_counts, at::kLong).to(inputs[0].device());
    at::Tensor recv = at::empty_like(counts);
    std::vector<int64_t> equal;
    Wait(pg_->alltoall_base(recv, counts, equal, equal), "AllToAll(counts)");
    at::Tensor recv_cpu = recv.cpu();
    std::vector<int64_t> recv_counts(recv_cpu.data_ptr<int64_t>(),
                                     recv_cpu.data_ptr<int64_t>() + size_);
    int64_t total = 0;
    for (int64_t c : recv_counts) total += c;
    std::vector<int64_t> shape = inputs[0].sizes().vec();
    shape[0] = total;
    at::Tensor out = at::empty(shape, parts[0].options());
    at::Tensor in = at::cat(parts, 0);
    // alltoall_base takes the splits by non-const reference: pass copies.
    std::vector<int64_t> out_splits = recv_counts, in_splits = send_counts;
    Wait(pg_->alltoall_base(out, in, out_splits, in_splits), "AllToAll");
    std::vector<at::Tensor> result;
    int64_t at_row = 0;
    for (int64_t c : recv_counts) {
      result.push_back(out.narrow(0, at_row, c));
      at_row += c;
    }
    return result;
  }

  void Barrier() override {
    CheckLive("Barrier");
    Wait(pg_->barrier(), "Barrier");
  }

  std::shared_ptr<CommWork> AllReduceSumAsync(at::Tensor& t) override {
    CheckLive("AllReduceSumAsync");
    TORCH_CHECK(t.is_contiguous(),
                "AllReduceSumAsync: needs a contiguous tensor");
    std::vector<at::Tensor> buf{t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    auto work = pg_->allreduce(buf, opts);
    return std::make_shared<C10dWork>(work, signal_, "AllReduceSumAsync",
                                      [buf] {});
  }

  std::shared_ptr<CommWork> ReduceScatterSumAsync(at::Tensor& input,
                                                  at::Tensor& output) override {
    CheckLive("ReduceScatterSumAsync");
    TORCH_CHECK(
        input.dim() == 1 && input.is_contiguous() && output.is_contiguous() &&
            input.numel() == output.numel() * size_ &&
            input.scalar_type() == output.scalar_type(),
        "ReduceScatterSumAsync: input ", input.sizes(),
        " is not 1-D contiguous of ", size_, " x output ", output.sizes());
    const int64_t part = output.numel();
    at::Tensor mine = input.narrow(0, rank_ * part, part);
    const bool in_place = output.data_ptr() == mine.data_ptr();
    if (backend_ == "gloo") {
      // As ReduceScatterSum: an all-reduce (abortable on Gloo) of the whole
      // input in place, then this rank's part.
      std::vector<at::Tensor> buf{input};
      c10d::AllreduceOptions opts;
      opts.reduceOp = c10d::ReduceOp::SUM;
      auto work = pg_->allreduce(buf, opts);
      return std::make_shared<C10dWork>(
          work, signal_, "ReduceScatterSumAsync",
          [buf, mine, output, in_place]() mutable {
            if (!in_place) output.copy_(mine);
          });
    }
    // NCCL reduces in place when output is this rank's part of input.
    at::Tensor out = output;
    auto work = pg_->_reduce_scatter_base(out, input);
    return std::make_shared<C10dWork>(work, signal_, "ReduceScatterSumAsync",
                                      [input, out] {});
  }

  std::shared_ptr<CommWork> AllGatherIntoAsync(const at::Tensor& input,
                                               at::Tensor& output) override {
    CheckLive("AllGatherIntoAsync");
    TORCH_CHECK(
        input.is_contiguous() && output.dim() == 1 && output.is_contiguous() &&
            output.numel() == input.numel() * size_ &&
            input.scalar_type() == output.scalar_type(),
        "AllGatherIntoAsync: output ", output.sizes(),
        " is not 1-D contiguous of ", size_, " x input ", input.sizes());
    at::Tensor in = input.reshape({-1});
    if (backend_ == "gloo") {
      // Gloo gathers into a flat buffer of its own and copies the parts into
      // these views when done.
      std::vector<std::vector<at::Tensor>> out(1);
      for (int r = 0; r < size_; ++r)
        out[0].push_back(output.narrow(0, r * in.numel(), in.numel()));
      std::vector<at::Tensor> ins{in};
      auto work = pg_->allgather(out, ins);
      return std::make_shared<C10dWork>(work, signal_, "AllGatherIntoAsync",
                                        [out, ins] {});
    }
    at::Tensor out = output;
    auto work = pg_->_allgather_base(out, in);
    return std::make_shared<C10dWork>(work, signal_, "AllGatherIntoAsync",
                                      [in, out] {});
  }

  void Abort() override {
    if (signal_->aborted.exchange(true)) return;
    { std::lock_guard<std::mutex> lock(signal_->mu); }
    signal_->cv.notify_all();
#ifdef GEMMA_WITH_CUDA
    if (backend_ == "nccl") pg_->abort();
#endif
  }

 private:
  void CheckLive(const char* what) const { signal_->CheckLive(what); }

  void AllReduce(at::Tensor& t, c10d::ReduceOp op) {
    CheckLive("AllReduce");
    std::vector<at::Tensor> buf{t.is_contiguous() ? t : t.contiguous()};
    c10d::AllreduceOptions opts;
    opts.reduceOp = op;
    Wait(pg_->allreduce(buf, opts), "AllReduce");
    if (!buf[0].is_same(t)) t.copy_(buf[0]);
  }

  void Wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
    WaitWork(work, signal_, what);
  }

  c10::intrusive_ptr<c10d::Backend> pg_;
  const std::string backend_;
  const int rank_;
  const int size_;
  const c10::Device device_;
  std::shared_ptr<AbortSignal> signal_;  // holds the aborted flag
};

bool IsLoopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1";
}

absl::StatusOr<std::shared_ptr<Comm>> MakeGroup(
    const c10::intrusive_ptr<c10d::Store>& base, const std::string& name,
    int rank, int size, const GroupsOptions& options,
    const std::string& store_host) {
  auto store = c10::make_intrusive<c10d::PrefixStore>(name + "/", base);
  try {
    if (options.device.rfind("cuda", 0) == 0) {
#ifdef GEMMA_WITH_CUDA
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = ToMs(options.timeout);
      auto pg =
          c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
      return std::shared_ptr<Comm>(std::make_shared<C10dComm>(
          pg, "nccl", rank, size, c10::Device(options.device)));
#else
      return absl::FailedPreconditionError(
          absl::StrCat("group ", name, ": device ", options.device,
                       " needs a build with GEMMA_WITH_CUDA (NCCL)"));
#endif
    }
    auto opts = c10d::ProcessGroupGloo::Options::create(ToMs(options.timeout));
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (ifname != nullptr && *ifname != '\0') {
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (IsLoopback(store_host)) {
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    opts->threads = 1;
    auto pg =
        c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, opts);
    return std::shared_ptr<Comm>(
        std::make_shared<C10dComm>(pg, "gloo", rank, size));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("group ", name, " (rank ", rank,
                                               " of ", size,
                                               ") did not form: ", e.what()));
  }
}

absl::Status SplitAddress(const std::string& address, std::string* host,
                          int* port) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), port) || *port <= 0 ||
      *port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rendezvous store address \"", address, "\" is not host:port"));
  }
  *host = address.substr(0, colon);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<RendezvousStore>> RendezvousStore::Serve(
    const std::string& host, int port, int world, absl::Duration timeout) {
  return OpenStore(host, port, /*server=*/true, world, timeout);
}

absl::StatusOr<std::shared_ptr<RendezvousStore>> RendezvousStore::Connect(
    const std::string& address, absl::Duration timeout) {
  std::string host;
  int port = 0;
  GEMMA_RETURN_IF_ERROR(SplitAddress(address, &host, &port));
  return OpenStore(host, port, /*server=*/false, 0, timeout);
}

absl::Status ValidateLayout(const ParallelLayout& l, int world) {
  if (l.tp < 1 || l.dp < 1 || l.ep < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel layout: tp, dp, ep must be >= 1 (got tp=", l.tp,
                     " dp=", l.dp, " ep=", l.ep, ")"));
  }
  if (l.tp * l.dp != world) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel layout: tp (", l.tp, ") x dp (", l.dp,
                     ") must equal the world size ", world));
  }
  if (world % l.ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel layout: ep (", l.ep, ") must divide the world size ", world));
  }
  return absl::OkStatus();
}

absl::StatusOr<ParallelGroups> MakeParallelGroups(const GroupsOptions& o) {
  GEMMA_RETURN_IF_ERROR(ValidateLayout(o.layout, o.world));
  if (o.rank < 0 || o.rank >= o.world) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", o.rank, " outside a world of ", o.world));
  }
  ParallelGroups groups;
  if (o.world == 1) return groups;
  std::string host;
  int port = 0;
  GEMMA_RETURN_IF_ERROR(SplitAddress(o.store_address, &host, &port));
  GEMMA_ASSIGN_OR_RETURN(std::shared_ptr<RendezvousStore> client,
                         RendezvousStore::Connect(o.store_address, o.timeout));
  c10::intrusive_ptr<c10d::Store> base = client->impl()->store;
  if (!o.prefix.empty()) {
    base = c10::make_intrusive<c10d::PrefixStore>(o.prefix, base);
  }
  const ParallelLayout& l = o.layout;
  const int tp_i = o.rank % l.tp;
  const int dp_i = o.rank / l.tp;
  // Every rank creates its groups in the same order: world, tp, dp, ep, edp.
  GEMMA_ASSIGN_OR_RETURN(groups.world,
                         MakeGroup(base, "world", o.rank, o.world, o, host));
  if (l.tp == o.world) {
    groups.tp = groups.world;
  } else if (l.tp > 1) {
    GEMMA_ASSIGN_OR_RETURN(groups.tp, MakeGroup(base, absl::StrCat("tp/", dp_i),
                                                tp_i, l.tp, o, host));
  }
  if (l.dp == o.world) {
    groups.dp = groups.world;
  } else if (l.dp > 1) {
    GEMMA_ASSIGN_OR_RETURN(groups.dp, MakeGroup(base, absl::StrCat("dp/", tp_i),
                                                dp_i, l.dp, o, host));
  }
  // EP folds over the whole world: `ep` consecutive ranks (across TP groups
  // when tp > 1); edp joins the ranks holding the same experts.
  const int ep_block = o.rank / l.ep, ep_i = o.rank % l.ep;
  if (l.ep == o.world) {
    groups.ep = groups.world;
  } else if (l.ep == l.dp && l.tp == 1) {
    groups.ep = groups.dp;
  } else if (l.ep > 1) {
    GEMMA_ASSIGN_OR_RETURN(
        groups.ep, MakeGroup(base, absl::StrCat("ep/", ep_block), ep_i, l.ep,
                             o, host));
  }
  if (l.ep == 1 && l.tp == 1) {
    groups.edp = groups.dp;
  } else if (l.ep == 1) {
    groups.edp = groups.world;
  } else if (l.ep < o.world) {
    GEMMA_ASSIGN_OR_RETURN(
        groups.edp, MakeGroup(base, absl::StrCat("edp/", ep_i), ep_block,
                              o.world / l.ep, o, host));
  }
  return groups;
}

absl::StatusOr<ParallelGroups> MakeParallelGroups(const RankContext& ctx) {
  GroupsOptions o;
  o.rank = ctx.rank;
  o.world = ctx.world;
  const auto& p = ctx.spec.parallel();
  o.layout.tp = p.tp() > 0 ? p.tp() : 1;
  o.layout.dp = p.dp() > 0 ? p.dp() : 1;
  o.layout.ep = p.ep() > 0 ? p.ep() : 1;
  o.device = ctx.device.empty() ? "cpu" : ctx.device;
  o.store_address = ctx.store_address;
  o.prefix = absl::StrCat(ctx.job, "/attempt/", ctx.attempt, "/");
  if (ctx.world > 1 && ctx.store_address.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", ctx.job, " rank ", ctx.rank, ": ", ctx.world,
        " ranks but no rendezvous store address from the coordinator"));
  }
  GEMMA_ASSIGN_OR_RETURN(ParallelGroups groups, MakeParallelGroups(o));
  if (ctx.on_abort) ctx.on_abort([groups] { AbortGroups(groups); });
  return groups;
}

void AbortGroups(const ParallelGroups& g) {
  for (const auto& c : {g.world, g.tp, g.dp, g.ep, g.edp}) {
    if (c) c->Abort();  // Abort() is idempotent
  }
}

absl::Status RunGlooRanks(
    int n,
    const std::function<absl::Status(int rank, ParallelGroups& groups)>& fn,
    ParallelLayout layout, absl::Duration timeout) {
  if (layout.tp == 1 && layout.dp == 1 && layout.ep == 1) layout.dp = n;
  GEMMA_RETURN_IF_ERROR(ValidateLayout(layout, n));
  // c10d's process-wide flight recorder adds a group to a std::map outside
  // its lock on the group's first collective (torch 2.11,
  // FlightRecorderDetail.hpp): ranks that are threads of one process race on
  // it and can crash. Turn it off here (unless asked for) before any group
  // of this process records; a rank per process is not affected.
  setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/0);
  GEMMA_ASSIGN_OR_RETURN(std::shared_ptr<RendezvousStore> server,
                         RendezvousStore::Serve("127.0.0.1", 0, n, timeout));
  std::vector<absl::Status> results(n);
  std::vector<ParallelGroups> groups(n);
  std::mutex mu;  // guards `formed`, `failed` and `first_failed`
  std::vector<bool> formed(n, false);
  bool failed = false;
  int first_failed = -1;
  auto abort_all = [&](int rank) {
    std::lock_guard<std::mutex> lock(mu);
    failed = true;
    if (first_failed < 0) first_failed = rank;
    for (int r = 0; r < n; ++r) {
      if (formed[r]) AbortGroups(groups[r]);
    }
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      GroupsOptions o;
      o.store_address = server->address();
      o.rank = r;
      o.world = n;
      o.layout = layout;
      o.timeout = timeout;
      absl::StatusOr<ParallelGroups> g = MakeParallelGroups(o);
      if (!g.ok()) {
        results[r] = g.status();
        abort_all(r);
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        groups[r] = *g;
        formed[r] = true;
        if (failed) AbortGroups(groups[r]);
      }
      absl::Status s;
      try {
        s = fn(r, groups[r]);
      } catch (const std::exception& e) {
        s = absl::InternalError(absl::StrCat("rank ", r, " threw: ", e.what()));
      }
      if (!s.ok()) {
        results[r] = s;
        abort_all(r);
      }
    });
  }
  for (auto& t : threads) t.join();
  // The first rank to fail caused the others' aborts: report it.
  if (first_failed < 0) return absl::OkStatus();
  return WithContext(absl::StrCat("rank ", first_failed, ": "),
                     results[first_failed]);
}

}  // namespace gemma
