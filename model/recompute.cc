#include "model/recompute.h"

#include <torch/torch.h>

#include <cstdint>

namespace gemma {
namespace {

thread_local bool recompute_enabled = false;
thread_local bool in_recompute = false;

struct InRecomputeGuard {
  bool previous = in_recompute;
  InRecomputeGuard() { in_recompute = true; }
  ~InRecomputeGuard() { in_recompute = previous; }
};

// The closure of a RecomputedForward, kept in the autograd context.
struct ForwardFn : torch::CustomClassHolder {
  std::function<at::Tensor(const at::Tensor&)> fn;
};

struct RecomputeFnFunction
    : public torch::autograd::Function<RecomputeFnFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                            const at::Tensor& x,
                            c10::intrusive_ptr<ForwardFn> fn) {
    ctx->save_for_backward({x});
    at::Tensor y = fn->fn(x);
    ctx->saved_data["fn"] = c10::IValue::make_capsule(std::move(fn));
    return y;
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    auto fn = c10::static_intrusive_pointer_cast<ForwardFn>(
        ctx->saved_data["fn"].toCapsule());
    at::Tensor x = saved[0].detach().requires_grad_(true);
    at::Tensor y;
    {
      torch::AutoGradMode grad_mode(true);
      InRecomputeGuard rerun;
      y = fn->fn(x);
    }
    torch::autograd::backward({y}, {grad_out[0]});
    return {x.grad(), at::Tensor()};
  }
};

// A CausalPlan as saved data: {window, start0, end0, start1, end1, ...}.
std::vector<int64_t> EncodePlan(const CausalPlan& plan) {
  std::vector<int64_t> v{plan.window};
  for (const auto& [s, e] : plan.dense_rows) {
    v.push_back(s);
    v.push_back(e);
  }
  return v;
}

CausalPlan DecodePlan(const std::vector<int64_t>& v) {
  CausalPlan plan;
  plan.window = v.at(0);
  for (size_t i = 1; i + 1 < v.size(); i += 2)
    plan.dense_rows.emplace_back(v[i], v[i + 1]);
  return plan;
}

// Reentrant recomputation (as torch.utils.checkpoint with use_reentrant):
// forward runs without grad and saves the inputs; backward reruns the layer
// on a detached copy of x with grad enabled and back-propagates through it,
// which accumulates the parameter gradients and yields d loss / d x.
struct RecomputeFunction : public torch::autograd::Function<RecomputeFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                            const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin, const at::Tensor& bias,
                            Gemma3DecoderLayerImpl* layer,
                            const CausalPlan* plan) {
    ctx->save_for_backward({x, cos, sin, bias});
    ctx->saved_data["layer"] =
        static_cast<int64_t>(reinterpret_cast<intptr_t>(layer));
    if (plan != nullptr) ctx->saved_data["plan"] = EncodePlan(*plan);
    return layer->forward(x, cos, sin, bias, nullptr, plan);
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    auto* layer = reinterpret_cast<Gemma3DecoderLayerImpl*>(
        static_cast<intptr_t>(ctx->saved_data["layer"].toInt()));
    at::Tensor x = saved[0].detach().requires_grad_(true);
    const bool has_plan = ctx->saved_data.count("plan") > 0;
    const CausalPlan plan =
        has_plan ? DecodePlan(ctx->saved_data["plan"].toIntVector())
                 : CausalPlan();
    at::Tensor y;
    {
      torch::AutoGradMode grad_mode(true);
      InRecomputeGuard rerun;
      y = layer->forward(x, saved[1], saved[2], saved[3], nullptr,
                         has_plan ? &plan : nullptr);
    }
    torch::autograd::backward({y}, {grad_out[0]});
    return {x.grad(),     at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

RecomputeScope::RecomputeScope(bool enabled) : previous_(recompute_enabled) {
  recompute_enabled = enabled;
}
RecomputeScope::~RecomputeScope() { recompute_enabled = previous_; }

bool RecomputeEnabled() { return recompute_enabled; }

bool InRecompute() { return in_recompute; }

at::Tensor RecomputedForward(const at::Tensor& x,
                             std::function<at::Tensor(const at::Tensor&)> fn) {
  if (!x.requires_grad() || !torch::GradMode::is_enabled()) return fn(x);
  auto holder = c10::make_intrusive<ForwardFn>();
  holder->fn = std::move(fn);
  return RecomputeFnFunction::apply(x, std::move(holder));
}

at::Tensor RecomputedLayerForward(Gemma3DecoderLayerImpl& layer,
                                  const at::Tensor& x, const at::Tensor& cos,
                                  const at::Tensor& sin, const at::Tensor& bias,
                                  const CausalPlan* plan) {
  if (!x.requires_grad() || !torch::GradMode::is_enabled()) {
    return layer.forward(x, cos, sin, bias, nullptr, plan);
  }
  return RecomputeFunction::apply(x, cos, sin, bias, &layer, plan);
}

}  // namespace gemma
