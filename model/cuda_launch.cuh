// Chained kernel launches (programmatic dependent launch, sm_90+).
//
// A decode step is a chain of ~300 small kernels, each reading what the one
// before wrote. Launched the usual way, a kernel's blocks start only after
// the previous kernel has fully drained, so each link pays the launch, the
// block start-up and the first loads' latency again (about 3 us of a 6-10 us
// projection on an H100). Chained, a kernel is launched while its
// predecessor still runs: it does what does not depend on the predecessor
// (a GEMV streams its weights into shared memory), then waits.
//
// The contract for a kernel launched with LaunchChained:
//  - every block calls WaitForPredecessor() before it reads anything an
//    earlier kernel wrote or writes anything (its output memory may still be
//    read by an earlier kernel), and on every path, so that its completion
//    implies its predecessor's (the chain is transitive);
//  - it may call LetDependentsLaunch() (any time) to let the next chained
//    kernel launch early: that kernel's blocks then take free SM slots and
//    wait on this kernel's completion. Ours call it first thing, so several
//    kernels may wait ahead; calling it only after the wait (one kernel
//    ahead at most) made 4B decode slower (275.8 against 282.8 tok/s on an
//    H100, bench/RESULTS.md session 9).
// Kernels launched the usual way are full barriers as before, and a chained
// kernel after one behaves as a usual launch. Stream capture records the
// chain as programmatic graph edges, so CUDA graphs keep it.
#ifndef GEMMA_MODEL_CUDA_LAUNCH_CUH_
#define GEMMA_MODEL_CUDA_LAUNCH_CUH_

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <utility>

#include "model/fused_ops.h"

namespace gemma::fused_cuda {

// Waits until the kernels this one is chained after have completed and
// their writes are visible. A no-op when launched the usual way.
__device__ __forceinline__ void WaitForPredecessor() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next chained kernel launch before this one completes.
__device__ __forceinline__ void LetDependentsLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Whether launches on the current device chain (fused_ops.h).
inline bool ChainHere() {
  return ChainedLaunchesApply(at::cuda::current_device());
}

// kernel<<<grid, block, smem, current stream>>>(args...), chained after the
// stream's previous kernel where ChainHere(); checks the launch.
template <typename... Params, typename... Args>
void LaunchChained(void (*kernel)(Params...), dim3 grid, dim3 block,
                   size_t smem, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = at::cuda::getCurrentCUDAStream();
  cudaLaunchAttribute chain{};
  chain.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  chain.val.programmaticStreamSerializationAllowed = 1;
  if (ChainHere()) {
    config.attrs = &chain;
    config.numAttrs = 1;
  }
  C10_CUDA_CHECK(
      cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace gemma::fused_cuda

#endif  // GEMMA_MODEL_CUDA_LAUNCH_CUH_
