#include "model/fused_ops.h"

#include <torch/torch.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(GEMMA_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>

#include "model/fused_kernels.h"
#include "model/gemv.h"
#endif

namespace gemma {

namespace {
// On unless the environment sets `name` to "0".
bool OnUnlessZero(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || std::strcmp(v, "0") != 0;
}

std::atomic<bool>& EnabledFlag() {
  static std::atomic<bool> on{OnUnlessZero("GEMMA_FUSED_KERNELS")};
  return on;
}

std::atomic<bool>& ChainFlag() {
  static std::atomic<bool> on{OnUnlessZero("GEMMA_CHAINED_LAUNCHES")};
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

bool ChainedLaunchesEnabled() { return ChainFlag().load(); }
void SetChainedLaunches(bool on) { ChainFlag() = on; }

bool ChainedLaunchesApply(int device) {
#if defined(GEMMA_WITH_CUDA)
  return ChainedLaunchesEnabled() &&
         at::cuda::getDeviceProperties(device)->major >= 9;
#else
  (void)device;
  return false;
#endif
}

bool FusedApplies(const at::Tensor& x, int64_t max_row) {
  if (!FusedKernelsBuilt() || !FusedKernelsEnabled() || !x.defined() ||
      !x.is_cuda() || x.dim() < 1 || x.size(-1) > max_row) {
    return false;
  }
  const auto t = x.scalar_type();
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

bool FusedDecodeAttentionServes(const at::Tensor& x, int64_t head_dim) {
#if defined(GEMMA_WITH_CUDA)
  return FusedApplies(x) && fused_cuda::DecodeAttentionHeadDim(head_dim);
#else
  (void)x;
  (void)head_dim;
  return false;
#endif
}

bool FusedGemvApplies(const at::Tensor& x, const at::Tensor& w,
                      const at::Tensor& bias) {
#if defined(GEMMA_WITH_CUDA)
  if (!FusedKernelsEnabled() || !x.defined() || !w.defined()) return false;
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || w.requires_grad() ||
       (bias.defined() && bias.requires_grad()))) {
    return false;
  }
  return fused_cuda::GemvApplies(x, w, bias);
#else
  (void)x, (void)w, (void)bias;
  return false;
#endif
}

bool FusedDecodeAttentionApplies(const DecodeAttentionInputs& in) {
#if defined(GEMMA_WITH_CUDA)
  return FusedApplies(in.q) && fused_cuda::DecodeAttentionRejects(in).empty();
#else
  (void)in;
  return false;
#endif
}

at::Tensor LinearWithGemv(const at::Tensor& x, const at::Tensor& w,
                          const at::Tensor& bias) {
  if (FusedGemvApplies(x, w, bias)) return FusedLinear(x, w, bias);
  return at::linear(x, w, bias);
}

bool GemvServesProjection(const at::Tensor& x, const at::Tensor& w,
                          const at::Tensor& bias) {
  // FusedGemvApplies first: it puts x on a CUDA device.
  return FusedGemvApplies(x, w, bias) && ChainedLaunchesApply(x.get_device());
}

#if defined(GEMMA_WITH_CUDA)
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// autograd::Function records every tensor input's device and dtype, so an
// absent optional tensor (no norm weight, no rope) travels as an empty one.
at::Tensor Present(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}
at::Tensor Absent(const at::Tensor& t) {
  return t.numel() == 0 ? at::Tensor() : t;
}

class RmsNormFn : public torch::autograd::Function<RmsNormFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, double eps, double offset) {
    at::Tensor rstd;
    at::Tensor y = fused_cuda::RmsNormForward(x, Absent(w), offset, eps, &rstd);
    ctx->save_for_backward({x, w, rstd});
    ctx->saved_data["offset"] = offset;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor w = Absent(saved[1]);
    const bool want_dw = w.defined() && ctx->needs_input_grad(1);
    auto [dx, dw] = fused_cuda::RmsNormBackward(
        grads[0], saved[0], saved[2], w, ctx->saved_data["offset"].toDouble(),
        want_dw);
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
    at::Tensor y = fused_cuda::NormRopeForward(x, norm, Absent(w), offset, eps,
                                               Absent(cos), Absent(sin), &rstd);
    ctx->save_for_backward({x, w, rstd, cos, sin});
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["norm"] = norm;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool norm = ctx->saved_data["norm"].toBool();
    const at::Tensor w = Absent(saved[1]);
    const bool want_dw = norm && w.defined() && ctx->needs_input_grad(1);
    auto [dx, dw] = fused_cuda::NormRopeBackward(
        grads[0], saved[0], saved[2], norm, w,
        ctx->saved_data["offset"].toDouble(), Absent(saved[3]),
        Absent(saved[4]), want_dw);
    return {dx,          dw,          at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class QkvNormRopeFn : public torch::autograd::Function<QkvNormRopeFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& y,
                               const at::Tensor& q_w, const at::Tensor& k_w,
                               double eps, double offset, const at::Tensor& cos,
                               const at::Tensor& sin, int64_t g) {
    TORCH_CHECK(y.dim() == 5 && g >= 1 && y.size(3) == g + 2,
                "FusedQkvNormRope: y must be [B, L, nkv, g + 2, hd] with g = ",
                g, ", got ", y.sizes());
    at::Tensor rstd_q, rstd_k;
    auto [q, k] = fused_cuda::QkNormRopeForward(y, g, q_w, k_w, offset, eps, cos,
                                                sin, &rstd_q, &rstd_k);
    at::Tensor v = y.select(3, g + 1).contiguous();
    ctx->save_for_backward({y, q_w, k_w, rstd_q, rstd_k, cos, sin});
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["g"] = g;
    return {q, k, v};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& y = saved[0];
    const int64_t g = ctx->saved_data["g"].toInt();
    const double offset = ctx->saved_data["offset"].toDouble();
    at::Tensor dy = at::empty(y.sizes(), y.options());
    at::Tensor dq_w, dk_w;
    if (grads[0].defined()) {
      dq_w = fused_cuda::NormRopeBackward(
                 grads[0], y.narrow(3, 0, g), saved[3], true, saved[1], offset,
                 saved[5], saved[6], ctx->needs_input_grad(1),
                 dy.narrow(3, 0, g))
                 .second;
    } else {
      dy.narrow(3, 0, g).zero_();
    }
    if (grads[1].defined()) {
      dk_w = fused_cuda::NormRopeBackward(
                 grads[1], y.select(3, g), saved[4], true, saved[2], offset,
                 saved[5], saved[6], ctx->needs_input_grad(2), dy.select(3, g))
                 .second;
    } else {
      dy.select(3, g).zero_();
    }
    if (grads[2].defined()) {
      dy.select(3, g + 1).copy_(grads[2]);
    } else {
      dy.select(3, g + 1).zero_();
    }
    return {dy,           dq_w,         dk_w,         at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
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
  return RmsNormFn::apply(x, Present(w, x), eps, offset);
}

at::Tensor FusedNormRope(const at::Tensor& x, bool norm, const at::Tensor& w,
                         double eps, double offset, const at::Tensor& cos,
                         const at::Tensor& sin) {
  return NormRopeFn::apply(x, Present(w, x), norm, eps, offset,
                           Present(cos, x), Present(sin, x));
}

at::Tensor FusedGeluMul(const at::Tensor& gate_up) {
  return GeluMulFn::apply(gate_up);
}

std::vector<at::Tensor> FusedQkvNormRope(const at::Tensor& y, int64_t g,
                                         const at::Tensor& q_w,
                                         const at::Tensor& k_w, double eps,
                                         double offset, const at::Tensor& cos,
                                         const at::Tensor& sin) {
  return QkvNormRopeFn::apply(y, q_w, k_w, eps, offset, cos, sin, g);
}

std::pair<at::Tensor, at::Tensor> FusedQkNormRope(
    const at::Tensor& y, int64_t g, const at::Tensor& q_w, const at::Tensor& k_w,
    double eps, double offset, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(!at::GradMode::is_enabled() ||
                  !(y.requires_grad() || q_w.requires_grad() || k_w.requires_grad()),
              "FusedQkNormRope is for inference (no autograd)");
  return fused_cuda::QkNormRopeForward(y, g, q_w, k_w, offset, eps, cos, sin,
                                       nullptr, nullptr);
}

at::Tensor FusedLinear(const at::Tensor& x, const at::Tensor& w,
                       const at::Tensor& bias) {
  TORCH_CHECK(FusedGemvApplies(x, w, bias),
              "FusedLinear: the GEMV kernel does not serve x ", x.sizes(),
              ", w ", w.sizes(), " (ask FusedGemvApplies first)");
  return fused_cuda::Gemv(x, w, bias);
}

at::Tensor FusedGemvGeluMul(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(FusedGemvApplies(x, w),
              "FusedGemvGeluMul: the GEMV kernel does not serve x ", x.sizes(),
              ", w ", w.sizes(), " (ask FusedGemvApplies first)");
  return fused_cuda::GemvGeluMul(x, w);
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

at::Tensor FusedDecodeAttention(const DecodeAttentionInputs& in) {
  TORCH_CHECK(!at::GradMode::is_enabled() ||
                  !(in.q.requires_grad() || in.k_new.requires_grad() ||
                    in.v_new.requires_grad()),
              "FusedDecodeAttention is for inference (no autograd)");
  return fused_cuda::DecodeAttention(in);
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
at::Tensor FusedLinear(const at::Tensor&, const at::Tensor&,
                       const at::Tensor&) {
  NotBuilt();
}
at::Tensor FusedGemvGeluMul(const at::Tensor&, const at::Tensor&) {
  NotBuilt();
}
std::vector<at::Tensor> FusedQkvNormRope(const at::Tensor&, int64_t,
                                         const at::Tensor&, const at::Tensor&,
                                         double, double, const at::Tensor&,
                                         const at::Tensor&) {
  NotBuilt();
}
std::pair<at::Tensor, at::Tensor> FusedQkNormRope(const at::Tensor&, int64_t,
                                                  const at::Tensor&, const at::Tensor&,
                                                  double, double, const at::Tensor&,
                                                  const at::Tensor&) {
  NotBuilt();
}
std::pair<at::Tensor, at::Tensor> FusedResidualNorm(const at::Tensor&,
                                                    const at::Tensor&,
                                                    const at::Tensor&,
                                                    const at::Tensor&, double,
                                                    double) {
  NotBuilt();
}
at::Tensor FusedDecodeAttention(const DecodeAttentionInputs&) { NotBuilt(); }

#endif

}  // namespace gemma
