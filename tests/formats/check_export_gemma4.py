#!/usr/bin/env python3
"""Checks a Gemma 4 HF folder we exported against the original transformers
saved.

  check_export_gemma4.py ORIGINAL EXPORTED

1. Every tensor of ORIGINAL is in EXPORTED under the same name, dtype and
   shape, bit for bit, and EXPORTED has nothing else (safetensors library).
2. transformers 5.17 from_pretrained loads EXPORTED (Gemma4ForCausalLM, or
   Gemma4ForConditionalGeneration for a VL config) with no missing or
   unexpected keys.
3. Its logits on a fixed text input match ORIGINAL's within 1e-5.
Prints "check_export_gemma4: OK"; exits non-zero with a message otherwise.
"""
import json
import os
import sys

import torch
from transformers import Gemma4ForCausalLM, Gemma4ForConditionalGeneration

from hf_tensors import check_same_tensors


def fail(msg):
    print("check_export_gemma4: FAIL:", msg)
    sys.exit(1)


def main():
    orig, exported = sys.argv[1], sys.argv[2]
    n = check_same_tensors(orig, exported, fail)
    vl = json.load(open(os.path.join(exported, "config.json"))).get(
        "model_type") == "gemma4"
    cls = Gemma4ForConditionalGeneration if vl else Gemma4ForCausalLM
    m0 = cls.from_pretrained(orig, attn_implementation="eager").eval()
    m1, info = cls.from_pretrained(exported, attn_implementation="eager",
                                   output_loading_info=True)
    m1.eval()
    bad = {k: v for k, v in info.items() if v}
    if bad:
        fail(f"loading info: {bad}")
    ids = torch.randint(3, 400, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        l0 = m0(input_ids=ids).logits
        l1 = m1(input_ids=ids).logits
    diff = (l0 - l1).abs().max().item()
    if diff > 1e-5:
        fail(f"logits differ by {diff}")
    print(f"check_export_gemma4: OK ({cls.__name__}, {n} tensors, "
          f"max logit diff {diff})")


if __name__ == "__main__":
    main()
