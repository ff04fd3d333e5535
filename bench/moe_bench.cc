// Expert GEMMs of one MoE layer at Gemma 4 26B-A4B shapes on one GPU: the
// per-expert loop against the grouped GEMM (model/moe.h MoeExperts), forward
// and backward in bf16, timed in the same process; prints the ratio.
//   moe_bench [--experts 16] [--rows 32768] [--hidden 2816] [--intermediate
//   704] [--iters 20]
// Defaults: the 16 experts one of 8 EP ranks owns, the token-expert pairs of
// 4096 tokens x top-8 (spread evenly), H 2816, expert intermediate 704.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "model/moe.h"

int main(int argc, char** argv) {
  int64_t experts = 16, rows = 32768, hidden = 2816, inter = 704, iters = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const int64_t v = std::atoll(argv[i + 1]);
    if (k == "--experts")
      experts = v;
    else if (k == "--rows")
      rows = v;
    else if (k == "--hidden")
      hidden = v;
    else if (k == "--intermediate")
      inter = v;
    else if (k == "--iters")
      iters = v;
    else {
      std::fprintf(
          stderr,
          "unknown argument %s (see the header of bench/moe_bench.cc)\n",
          k.c_str());
      return 2;
    }
  }
  if (argc > 1 &&
      (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    std::printf(
        "moe_bench [--experts N] [--rows N] [--hidden N] [--intermediate N] "
        "[--iters N]\n");
    return 0;
  }
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "moe_bench needs a CUDA device\n");
    return 1;
  }
  const torch::Device dev(torch::kCUDA, 0);
  gemma::MoeExperts m(hidden, inter, 0, experts);
  m->to(dev, torch::kBFloat16);
  std::vector<int64_t> counts(experts, rows / experts);
  counts.back() += rows - (rows / experts) * experts;
  torch::Tensor x0 =
      torch::randn({rows, hidden}, torch::dtype(torch::kBFloat16).device(dev));
  auto time = [&](bool grouped) {
    m->grouped_gemm = grouped;
    double best = 1e30;
    for (int64_t i = 0; i < iters + 3; ++i) {
      torch::cuda::synchronize();
      const auto t0 = std::chrono::steady_clock::now();
      torch::Tensor x = x0.detach().requires_grad_(true);
      m->forward(x, counts).sum().backward();
      torch::cuda::synchronize();
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
              .count();
      if (i >= 3 && s < best) best = s;
    }
    return best;
  };
  const double loop = time(false);
  const bool supported = gemma::MoeGroupedGemmSupported(x0, hidden, inter);
  const double grouped = supported ? time(true) : loop;
  const double flops =
      3.0 * 2.0 * rows * hidden * (3.0 * inter);  // fwd + 2x bwd
  std::printf(
      "experts %lld rows %lld H %lld Im %lld (bf16, forward + backward)\n",
      (long long)experts, (long long)rows, (long long)hidden, (long long)inter);
  std::printf("per-expert loop : %8.3f ms  %6.1f TFLOP/s\n", loop * 1e3,
              flops / loop / 1e12);
  if (supported) {
    std::printf("grouped GEMM    : %8.3f ms  %6.1f TFLOP/s\n", grouped * 1e3,
                flops / grouped / 1e12);
    std::printf("speedup         : %.2fx\n", loop / grouped);
  } else {
    std::printf("grouped GEMM    : not supported on this device\n");
  }
  return 0;
}
