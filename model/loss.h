// Causal language-model loss over the tied LM head without materialising the
// [tokens, vocab] logits of the whole batch (Gemma's vocabulary is 262k).
//
// FusedLinearCrossEntropy runs the head and the cross-entropy chunk by chunk
// in forward and computes the gradients of the hidden states and of the head
// weight there too (logits and softmax of one chunk at a time), so peak extra
// memory is one chunk's [chunk, V] logits instead of the whole batch's.
// Numerics follow transformers' ForCausalLMLoss: logits in the hidden dtype,
// upcast to fp32, optional soft-capping cap * tanh(z / cap), log-softmax in
// fp32, labels shifted by one, label -100 ignored. With bf16/fp16 hidden
// states and no soft-capping the logits stay in their dtype (log-softmax and
// softmax compute in fp32 inside their kernels) and the gradient of the
// logits is rounded to that dtype once, as autograd does in transformers, so
// the head's two gradient matmuls run on the tensor cores.
#ifndef GEMMA_MODEL_LOSS_H_
#define GEMMA_MODEL_LOSS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace gemma {

struct LmLoss {
  // Sum over target tokens of -log p(label) (fp32 scalar, differentiable
  // with respect to hidden and head weight).
  at::Tensor loss_sum;
  at::Tensor tokens;   // int64 scalar: number of target tokens
  at::Tensor correct;  // int64 scalar: targets where argmax(logits) == label
};

struct LmLossOptions {
  double softcap = 0.0;         // final_logit_softcapping; <= 0: off
  int64_t chunk_tokens = 2048;  // rows of logits computed at once
  int64_t ignore_index = -100;
};

// hidden [B, T, H] (final-normed decoder output), head weight [V, H] (the
// embedding, tied), labels [B, T] int64 NOT shifted: position t predicts
// labels[t + 1]. Gradients flow to `hidden` and to `weight` when they require
// them. Throws c10::Error on shape mismatches.
LmLoss CausalLmLoss(const at::Tensor& hidden, const at::Tensor& weight,
                    const at::Tensor& labels,
                    const LmLossOptions& options = {});

// The same for already shifted rows: h [N, H] and targets [N] (no ignored
// entries needed; they are honoured if present).
LmLoss TokenLoss(const at::Tensor& h, const at::Tensor& weight,
                 const at::Tensor& targets, const LmLossOptions& options = {});

}  // namespace gemma

#endif  // GEMMA_MODEL_LOSS_H_
