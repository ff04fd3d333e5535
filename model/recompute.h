// Activation recomputation for the decoder layers: a layer run through
// RecomputedLayerForward keeps only its input for backward and reruns its
// forward there (with grad enabled) to get the gradients, trading one extra
// forward per layer for not storing the layer's activations. The gradients
// are those of the plain forward: the layer is deterministic (Gemma 3 has no
// dropout), so the rerun computes the same values.
//
// Turned on per thread with a RecomputeScope around the forward (the trainer
// does this when spec.model.recompute is set); Gemma3TextModelImpl::Decode
// asks RecomputeEnabled() for each layer. Only for training forwards (no KV
// cache) whose layer input requires grad; otherwise layers run normally.
#ifndef GEMMA_MODEL_RECOMPUTE_H_
#define GEMMA_MODEL_RECOMPUTE_H_

#include <ATen/core/Tensor.h>

#include <functional>

#include "model/gemma3.h"

namespace gemma {

// While alive, decoder forwards on this thread recompute their layers.
class RecomputeScope {
 public:
  explicit RecomputeScope(bool enabled = true);
  ~RecomputeScope();
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;

 private:
  bool previous_;
};

bool RecomputeEnabled();

// True while a recomputed forward reruns in backward (on this thread):
// bookkeeping that must count a forward once (router load) skips it then.
bool InRecompute();

// Any layer: `fn(x)` is run without keeping its activations and
// rerun in backward. `fn` must be deterministic and hold everything it needs
// besides x by value (it outlives the caller's frame until backward).
at::Tensor RecomputedForward(const at::Tensor& x,
                             std::function<at::Tensor(const at::Tensor&)> fn);

// layer->forward(x, cos, sin, bias, nullptr, plan) without keeping its
// activations; the parameters' gradients are accumulated into their .grad()
// in backward. The plan (may be null) is copied for the rerun.
at::Tensor RecomputedLayerForward(Gemma3DecoderLayerImpl& layer,
                                  const at::Tensor& x, const at::Tensor& cos,
                                  const at::Tensor& sin, const at::Tensor& bias,
                                  const CausalPlan* plan = nullptr);

}  // namespace gemma

#endif  // GEMMA_MODEL_RECOMPUTE_H_
