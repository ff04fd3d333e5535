#include "model/fused_ops.h"

#include <torch/torch.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(GEMMA_WITH_CUDA)
#include "model/fused_kernels.h"
#endif

namespace gemma {

namespace {
std::atomic<bool>& EnabledFlag() {
  static std::atomic<bool> on{[] {
    const char* v = std::getenv("GEMMA_FUSED_KERNELS");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }()};
  return on;
}
}  // namespace

bool FusedKernelsBuilt() {
#if defined(GEMMA_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

bool FusedKernelsEnabled() { return EnabledFlag().load(); }
void SetFusedKernels(bool on) { EnabledFlag() = on; }

bool FusedApplies(const at::Tensor& x, int64_t max_row) {
  if (!FusedKernelsBuilt() || !FusedKernelsEnabled() || !x.defined() ||
      !x.is_cuda() || x.dim() < 1 || x.size(-1) > max_row) {
    return false;
  }
  const auto t = x.scalar_type();
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

#if defined(GEMMA_WITH_CUDA)
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class RmsNormFn : public torch::autograd::Function<RmsNormFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, double eps, double offset) {
    at::Tensor rstd;
    at::Tensor y = fused_cuda::RmsNormForward(x, w, offset, eps, &rstd);
    ctx->save_for_backward({x, w, rstd});
    ctx->saved_data["offset"] = offset;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool want_dw = saved[1].defined() && ctx->needs_input_grad(1);
    auto [dx, dw] = fused_cuda::RmsNormBackward(
        grads[0], saved[0], saved[2], saved[1],
        ctx->saved_data["offset"].toDouble(), want_dw);
    return {dx.view(saved[0].sizes()), dw, at::Tensor(), at::Tensor()};
  }
};

class NormRopeFn : public torch::autograd::Function<NormRopeFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, bool norm, double eps,
                            double offset, const at::Tensor& cos,
                            const at::Tensor& sin) {
    at::Tensor rstd;
    at::Tensor y =
        fused_cuda::NormRopeForward(x, norm, w, offset, eps, cos, sin, &rstd);
    ctx->save_for_backward({x, w, rstd, cos, sin});
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["norm"] = norm;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool norm = ctx->saved_data["norm"].toBool();
    const bool want_dw = norm && saved[1].defined() && ctx->needs_input_grad(1);
    auto [dx, dw] = fused_cuda::NormRopeBackward(
        grads[0], saved[0], saved[2], norm, saved[1],
        ctx->saved_data["offset"].toDouble(), saved[3], saved[4], want_dw);
    return {dx,          dw,          at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class GeluMulFn : public torch::autograd::Function<GeluMulFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate_up) {
    ctx->save_for_backward({gate_up});
    return fused_cuda::GeluMulForward(gate_up);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {fused_cuda::GeluMulBackward(grads[0], saved[0])
                .view(saved[0].sizes())};
  }
};
}  // namespace

at::Tensor FusedRmsNorm(const at::Tensor& x, const at::Tensor& w, double eps,
                        double offset) {
  return RmsNormFn::apply(x, w, eps, offset);
}

at::Tensor FusedNormRope(const at::Tensor& x, bool norm, const at::Tensor& w,
                         double eps, double offset, const at::Tensor& cos,
                         const at::Tensor& sin) {
  return NormRopeFn::apply(x, w, norm, eps, offset, cos, sin);
}

at::Tensor FusedGeluMul(const at::Tensor& gate_up) {
  return GeluMulFn::apply(gate_up);
}

std::pair<at::Tensor, at::Tensor> FusedResidualNorm(const at::Tensor& residual,
                                                    const at::Tensor& x,
                                                    const at::Tensor& w,
                                                    const at::Tensor& w2,
                                                    double eps, double offset) {
  TORCH_CHECK(!at::GradMode::is_enabled() ||
                  !(residual.requires_grad() || x.requires_grad() ||
                    (w.defined() && w.requires_grad()) ||
                    (w2.defined() && w2.requires_grad())),
              "FusedResidualNorm is for inference (no autograd)");
  return fused_cuda::ResidualRmsNorm(residual, x, w, w2, offset, eps);
}

#else  // !GEMMA_WITH_CUDA

namespace {
[[noreturn]] void NotBuilt() {
  TORCH_CHECK(false,
              "fused kernels: this build has no CUDA kernels "
              "(GEMMA_WITH_CUDA off); ask FusedApplies first");
}
}  // namespace

at::Tensor FusedRmsNorm(const at::Tensor&, const at::Tensor&, double, double) {
  NotBuilt();
}
at::Tensor FusedNormRope(const at::Tensor&, bool, const at::Tensor&, double,
                         double, const at::Tensor&, const at::Tensor&) {
  NotBuilt();
}
at::Tensor FusedGeluMul(const at::Tensor&) { NotBuilt(); }
std::pair<at::Tensor, at::Tensor> FusedResidualNorm(const at::Tensor&,
                                                    const at::Tensor&,
                                                    const at::Tensor&,
                                                    const at::Tensor&, double,
                                                    double) {
  NotBuilt();
}

#endif

}  // namespace gemma
