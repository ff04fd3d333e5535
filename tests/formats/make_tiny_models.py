#!/usr/bin/env python3
"""Builds tiny random Gemma 3 checkpoints with transformers for the formats tests.

Writes under --out:
  vl_f32/              Gemma3ForConditionalGeneration, float32, one model.safetensors
  vl_bf16_sharded/     the same architecture in bfloat16, saved in small shards + index
  vl_f16/              float16
  text_f32/            Gemma3ForCausalLM, float32
  text_bf16_sharded/   Gemma3ForCausalLM, bfloat16, sharded
  vl_legacy_hub/       vl_f32's tensors under the original hub key layout
                       (language_model.model.*, vision_tower.vision_model.*)
  vl_legacy_4x/        vl_f32's tensors under the transformers 4.5x layout
                       (model.language_model.*, model.vision_tower.vision_model.*,
                       model.multi_modal_projector.*, plus a tied lm_head.weight)
  interop.safetensors  one tensor per dtype (st_interop.py's set), written by the
                       safetensors library
Every parameter is re-randomised (HF zero-inits some, e.g. norms).
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import (Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration,
                          Gemma3TextConfig)

import st_interop

TEXT = dict(vocab_size=67, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=8,
            max_position_embeddings=128, attn_implementation="eager")
VISION = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
              image_size=16, patch_size=4, vision_use_head=False)


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.5)


def vl_model(dtype, seed):
    cfg = Gemma3Config(text_config=dict(TEXT), vision_config=dict(VISION), mm_tokens_per_image=4,
                       image_token_index=66, boi_token_index=64, eoi_token_index=65)
    cfg._attn_implementation = "eager"
    m = Gemma3ForConditionalGeneration(cfg).eval()
    randomise(m, seed)
    return m.to(dtype)


def text_model(dtype, seed):
    cfg = Gemma3TextConfig(**TEXT)
    m = Gemma3ForCausalLM(cfg).eval()
    randomise(m, seed)
    return m.to(dtype)


def rename_copy(src, dst, rename):
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))
    tensors = load_file(os.path.join(src, "model.safetensors"))
    out = {}
    for k, v in tensors.items():
        for new_k in rename(k):
            out[new_k] = v.clone()
    save_file(out, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})


def hub_names(k):
    if k.startswith("vision_tower."):
        return ["vision_tower.vision_model." + k[len("vision_tower."):]]
    return [k]


def v4_names(k):
    if k.startswith("language_model.model."):
        rest = k[len("language_model.model."):]
        names = ["model.language_model." + rest]
        if rest == "embed_tokens.weight":
            names.append("lm_head.weight")
        return names
    if k.startswith("vision_tower."):
        return ["model.vision_tower.vision_model." + k[len("vision_tower."):]]
    return ["model." + k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    torch.manual_seed(0)
    vl_model(torch.float32, 1).save_pretrained(os.path.join(tmp, "vl_f32"))
    vl_model(torch.bfloat16, 2).save_pretrained(os.path.join(tmp, "vl_bf16_sharded"),
                                                max_shard_size="20KB")
    vl_model(torch.float16, 3).save_pretrained(os.path.join(tmp, "vl_f16"))
    text_model(torch.float32, 4).save_pretrained(os.path.join(tmp, "text_f32"))
    text_model(torch.bfloat16, 5).save_pretrained(os.path.join(tmp, "text_bf16_sharded"),
                                                  max_shard_size="10KB")
    rename_copy(os.path.join(tmp, "vl_f32"), os.path.join(tmp, "vl_legacy_hub"), hub_names)
    rename_copy(os.path.join(tmp, "vl_f32"), os.path.join(tmp, "vl_legacy_4x"), v4_names)
    save_file(st_interop.interop_tensors(), os.path.join(tmp, "interop.safetensors"),
              metadata=st_interop.METADATA)
    for d in ["vl_bf16_sharded", "text_bf16_sharded"]:
        assert os.path.exists(os.path.join(tmp, d, "model.safetensors.index.json")), d
    shutil.rmtree(args.out, ignore_errors=True)
    os.rename(tmp, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
