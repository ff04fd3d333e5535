// The fixture of the CUDA kernels' unit tests (fused_ops_test, gemv_test,
// decode_attention_test): each test skips, saying why, without a CUDA device,
// in a build without the kernels (GEMMA_WITH_CUDA off) or with them switched
// off (GEMMA_FUSED_KERNELS=0), and starts from the RNG seed kSeed.
#ifndef GEMMA_MODEL_CUDA_KERNEL_TEST_H_
#define GEMMA_MODEL_CUDA_KERNEL_TEST_H_

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/fused_ops.h"

namespace gemma {

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
