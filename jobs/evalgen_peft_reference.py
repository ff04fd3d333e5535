"""Teacher-forced loss of the evalgen fixture's eval set through the real
`peft` (PeftModel.from_pretrained on the fixture's HF model with an adapter
folder that gemma exported), the reference for evaluating an adapter checkpoint.

Usage: evalgen_peft_reference.py FIXTURE_DIR HF_ADAPTER_DIR OUT_JSON
Writes OUT_JSON: {loss_sum, tokens, correct, loss, accuracy, base_loss}.
"""
import json
import os
import sys

import torch
from peft import PeftModel
from transformers import Gemma3ForConditionalGeneration

from evalgen_common import eval_sums, make_processor

fixture, adapter, out = sys.argv[1:4]
model_dir = os.path.join(fixture, "model")
tokenizer, processor = make_processor(model_dir)
with open(os.path.join(fixture, "eval.jsonl")) as f:
    convs = [json.loads(line)["messages"] for line in f if line.strip()]
base = Gemma3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
base_sum, base_tokens, _ = eval_sums(base, processor, tokenizer, convs, fixture)
model = PeftModel.from_pretrained(base, adapter).eval()
loss_sum, tokens, correct = eval_sums(model, processor, tokenizer, convs, fixture)
with open(out, "w") as f:
    json.dump({"loss_sum": loss_sum, "tokens": tokens, "correct": correct, "loss": loss_sum / tokens,
               "accuracy": correct / tokens, "base_loss": base_sum / base_tokens}, f)
print(open(out).read())
