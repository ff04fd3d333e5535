"""transformers' training step on the batches our benchmark trained on.

  hf_train_bench.py HF_DIR BATCHES WARMUP STEPS
BATCHES (safetensors) holds "b<i>/input_ids", "/labels", "/attention_mask",
"/token_type_ids", "/pixel_values" (optional) for i = 0..WARMUP+STEPS-1.
Each step: forward with labels (transformers' own loss), backward, global
norm clipping to 1.0, torch.optim.AdamW. Prints one JSON line:
{"tokens_per_s": ..., "seconds": ..., "tokens": ..., "first_loss": ...}
(tokens = non-padding input tokens of the timed steps).
"""
import json
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import Gemma3ForConditionalGeneration


def main():
    hf_dir, batches_file = sys.argv[1], sys.argv[2]
    warmup, steps = int(sys.argv[3]), int(sys.argv[4])
    data = load_file(batches_file)
    model = Gemma3ForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    first_loss, tokens, seconds = None, 0, 0.0
    for i in range(warmup + steps):
        b = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith(f"b{i}/")}
        start = time.perf_counter()
        out = model(**b)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        if first_loss is None:
            first_loss = out.loss.item()
        if i >= warmup:
            seconds += elapsed
            tokens += int(b["attention_mask"].sum())
    print(json.dumps({"tokens_per_s": tokens / seconds, "seconds": seconds,
                      "tokens": tokens, "first_loss": first_loss,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
