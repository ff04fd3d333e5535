// One function recorded as a CUDA graph and replayed (at::cuda::CUDAGraph).
//
// Capture runs `warmup` then records `body` on a side stream (a CUDA graph
// cannot be captured on the default stream), into a private memory pool: the
// tensors body allocates keep their addresses across replays, and the one it
// returns is the graph's output, overwritten by every Replay. Replay launches
// the recorded kernels on the caller's current stream with no host work per
// kernel. Whatever body reads must stay where it was at capture (static
// inputs are written in place between replays, never reassigned).
//
// Every CUDA call lives in cuda_graph.cc under GEMMA_WITH_CUDA; elsewhere
// Capture returns false and the caller runs its function eagerly. Not
// thread-safe; the body must issue no host sync (.item(), .cpu()) and touch
// no host memory (a CPU tensor copied to the device), which capture forbids.
#ifndef GEMMA_MODEL_CUDA_GRAPH_H_
#define GEMMA_MODEL_CUDA_GRAPH_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/types.h>

#include <functional>
#include <memory>

namespace gemma {

// Whether this build can capture CUDA graphs (GEMMA_WITH_CUDA).
bool CudaGraphsBuilt();

class CudaGraph {
 public:
  CudaGraph();
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // On `device` (a CUDA device): makes a side stream wait for the work
  // queued so far, runs `warmup` on it (first use of cuBLAS handles and
  // workspaces on that stream must not happen during capture), records
  // `body` into a graph, and makes the current stream wait for the side
  // stream. Returns false, running nothing, where graphs do not apply (not a
  // CUDA build or not a CUDA device). Throws c10::Error when the capture
  // fails (the body did something capture forbids). Once per instance.
  bool Capture(c10::Device device, const std::function<void()>& warmup,
               const std::function<torch::Tensor()>& body);
  bool captured() const { return state_ != nullptr; }

  // Launches the graph on the current stream; returns the output tensor
  // body returned at capture (its contents are this replay's).
  torch::Tensor Replay();

 private:
  struct State;  // the at::cuda::CUDAGraph and its output (cuda_graph.cc)
  std::unique_ptr<State> state_;
};

}  // namespace gemma

#endif  // GEMMA_MODEL_CUDA_GRAPH_H_
