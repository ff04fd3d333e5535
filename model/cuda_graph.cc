#include "model/cuda_graph.h"

#include <c10/util/Exception.h>

#ifdef GEMMA_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace gemma {

struct CudaGraph::State {
#ifdef GEMMA_WITH_CUDA
  at::cuda::CUDAGraph graph;
#endif
  torch::Tensor output;  // in the graph's pool; released before the graph
};

bool CudaGraphsBuilt() {
#ifdef GEMMA_WITH_CUDA
  return true;
#else
  return false;
#endif
}

CudaGraph::CudaGraph() = default;
CudaGraph::~CudaGraph() = default;

bool CudaGraph::Capture(c10::Device device, const std::function<void()>& warmup,
                        const std::function<torch::Tensor()>& body) {
  TORCH_CHECK(state_ == nullptr, "CudaGraph: already captured");
#ifdef GEMMA_WITH_CUDA
  if (!device.is_cuda()) return false;
  c10::cuda::CUDAGuard device_guard(device);
  auto state = std::make_unique<State>();
  c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream();
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
  c10::cuda::CUDAEvent queued;
  queued.record(caller);
  queued.block(side);
  {
    c10::cuda::CUDAStreamGuard on_side(side);
    warmup();
    c10::cuda::device_synchronize();  // as torch.cuda.graph does
    state->graph.capture_begin();
    try {
      state->output = body();
    } catch (...) {
      try {
        state->graph.capture_end();  // leave the stream out of capture mode
      } catch (...) {
      }
      throw;
    }
    state->graph.capture_end();  // also instantiates
  }
  c10::cuda::CUDAEvent done;
  done.record(side);
  done.block(caller);
  state_ = std::move(state);
  return true;
#else
  (void)device;
  (void)warmup;
  (void)body;
  return false;
#endif
}

torch::Tensor CudaGraph::Replay() {
  TORCH_CHECK(state_ != nullptr, "CudaGraph: Replay before a capture");
#ifdef GEMMA_WITH_CUDA
  state_->graph.replay();
#endif
  return state_->output;
}

}  // namespace gemma
