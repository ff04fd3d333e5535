#!/usr/bin/env python3
"""Checks an HF folder we exported against the original transformers saved.

  check_export.py ORIGINAL EXPORTED

1. Every tensor of ORIGINAL is in EXPORTED under the same name, same dtype and
   shape, bit for bit (and EXPORTED has nothing else); read with the
   safetensors library, not our reader.
2. transformers loads EXPORTED with no warning or error logged.
3. The loaded model gives exactly the same logits as ORIGINAL on a fixed input
   (with an image for VL models).
Exits non-zero with a message on the first failure.
"""
import logging
import sys
import warnings

import torch
from transformers import AutoConfig, Gemma3ForCausalLM, Gemma3ForConditionalGeneration
from transformers.utils import logging as hf_logging

from hf_tensors import check_same_tensors


def fail(msg):
    print("check_export: FAIL:", msg)
    sys.exit(1)


def main():
    orig, exp = sys.argv[1], sys.argv[2]
    n = check_same_tensors(orig, exp, fail)

    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                records.append(record.getMessage())

    hf_logging.set_verbosity_warning()
    handler = Catch()
    hf_logging.get_logger().addHandler(handler)
    vl = AutoConfig.from_pretrained(orig).model_type == "gemma3"
    cls = Gemma3ForConditionalGeneration if vl else Gemma3ForCausalLM
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m_exp = cls.from_pretrained(exp, attn_implementation="eager").eval()
    hf_logging.get_logger().removeHandler(handler)
    msgs = records + [str(x.message) for x in w]
    if msgs:
        fail("transformers warned while loading the export: " + " | ".join(msgs)[:2000])
    m_orig = cls.from_pretrained(orig, attn_implementation="eager").eval()

    g = torch.Generator().manual_seed(0)
    cfg = m_orig.config
    with torch.no_grad():
        if vl:
            tc = cfg.text_config
            n_img = cfg.mm_tokens_per_image
            ids = torch.randint(0, 60, (1, 12), generator=g)
            ids[0, 2:2 + n_img] = cfg.image_token_index
            vc = cfg.vision_config
            pix = torch.randn(1, 3, vc.image_size, vc.image_size, generator=g)
            pix = pix.to(m_orig.dtype)
            kw = dict(input_ids=ids, pixel_values=pix, token_type_ids=(ids == cfg.image_token_index).long())
        else:
            ids = torch.randint(0, cfg.vocab_size, (2, 10), generator=g)
            kw = dict(input_ids=ids)
        la = m_orig(**kw).logits
        lb = m_exp(**kw).logits
    if not torch.isfinite(la.float()).all():
        fail("original logits are not finite")
    if not torch.equal(la, lb):
        fail(f"logits differ: max abs diff {(la.float() - lb.float()).abs().max().item()}")
    print(f"check_export: OK ({n} tensors, logits {list(la.shape)} equal)")


if __name__ == "__main__":
    main()
