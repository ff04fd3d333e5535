// A GPU-kernel profile of a region of a LibTorch program through Kineto (the
// profiler behind torch.profiler), for machines without Nsight Systems.
//
//   KinetoProfile prof;           // starts recording CPU ops and CUDA kernels
//   step();  Sync();
//   prof.Finish(dir);             // writes the summaries and the trace
//
// Finish writes, under `dir` (which must exist):
//   kernels.csv  GPU time per kernel name (also memcpy/memset), most first:
//                rank,total_ms,pct,count,avg_us,name
//   ops.csv      GPU time per innermost ATen op that launched it, most first:
//                rank,total_ms,pct,kernels,name
//   timeline.csv wall time per kernel name: what each kernel adds to the
//                latest end so far (gaps before it included), so overlapping
//                (chained) kernels are not counted twice; as kernels.csv
//   runtime.csv  host time per CUDA runtime call (cudaLaunchKernel,
//                cudaGraphLaunch, ...); as kernels.csv
//   trace.json   the Chrome trace (chrome://tracing, ui.perfetto.dev)
// and prints the top `top` rows of both to stdout. Throws c10::Error when
// the profiler cannot start.
#ifndef GEMMA_BENCH_KINETO_PROFILE_H_
#define GEMMA_BENCH_KINETO_PROFILE_H_

#include <string>

namespace gemma {

class KinetoProfile {
 public:
  KinetoProfile();
  ~KinetoProfile();
  KinetoProfile(const KinetoProfile&) = delete;
  KinetoProfile& operator=(const KinetoProfile&) = delete;

  // Stops recording (the caller synchronises the device first) and writes
  // the files. `steps` divides the times printed per step.
  void Finish(const std::string& dir, int steps = 1, int top = 30);

 private:
  bool active_ = false;
};

}  // namespace gemma

#endif  // GEMMA_BENCH_KINETO_PROFILE_H_
