// The fixture of the CUDA kernels' unit tests (fused_ops_test, gemv_test,
// decode_attention_test): each test skips, saying why, without a CUDA device,
// in a build without the kernels (GEMMA_WITH_CUDA off) or with them switched
// off (GEMMA_FUSED_KERNELS=0), and starts from the RNG seed kSeed. Also the
// CUDA device and the relative error the tests compare with.
#ifndef GEMMA_MODEL_CUDA_KERNEL_TEST_H_
#define GEMMA_MODEL_CUDA_KERNEL_TEST_H_

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/fused_ops.h"

namespace gemma {

inline const torch::Device kCuda(torch::kCUDA);

// |a - ref| / |ref| (2-norms, in fp32).
inline double Rel(const torch::Tensor& a, const torch::Tensor& ref) {
  torch::Tensor r = ref.to(torch::kFloat);
  return ((a.to(torch::kFloat) - r).norm() / r.norm().clamp_min(1e-30))
      .item<double>();
}

template <int kSeed>
class CudaKernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    if (!FusedKernelsBuilt()) GTEST_SKIP() << "built without CUDA kernels";
    if (!FusedKernelsEnabled()) GTEST_SKIP() << "GEMMA_FUSED_KERNELS=0";
    torch::manual_seed(kSeed);
  }
};

}  // namespace gemma

#endif  // GEMMA_MODEL_CUDA_KERNEL_TEST_H_
