#!/usr/bin/env python3
"""Writes a tiny random Gemma 3 VL model as a Hugging Face folder, for demos.

Nothing can be downloaded here, so the quickstart makes its own model: the real
architecture (SigLIP tower, projector, Gemma 3 decoder with sliding and global
layers) at toy sizes, every parameter random from --seed.

  python deploy/make_tiny_model.py --out /tmp/tiny-gemma3 [--seed 0]
"""
import argparse

import torch
from transformers import Gemma3Config, Gemma3ForConditionalGeneration


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write (config.json + model.safetensors)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    config = Gemma3Config(
        text_config=dict(vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, sliding_window=16, max_position_embeddings=512),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=64, patch_size=8,
                           vision_use_head=False),
        mm_tokens_per_image=16, image_token_index=500, boi_token_index=498,
        eoi_token_index=499)
    torch.manual_seed(args.seed)
    model = Gemma3ForConditionalGeneration(config)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for p in model.parameters():  # HF zero-inits some; make every one random
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"tiny Gemma 3 VL ({n / 1e6:.2f} M parameters) written to {args.out}")


if __name__ == "__main__":
    main()
