#!/usr/bin/env python3
"""Independent reference for our checkpoint layout (MODEL_NAMES.md), in torch.

  expected_shards.py HF_DIR TP OUT.safetensors

Reads an HF Gemma 3 folder with the safetensors library, builds each of our
tensors (q/k/v fused per KV group, [gate; up], vision [q; k; v]) and each
rank's TP shard, and saves them as "rank{r}/{our name}".
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hf_tensors import load_tensors


def main():
    folder, tp, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cfg = json.load(open(os.path.join(folder, "config.json")))
    vl = "vision_config" in cfg
    tc = cfg["text_config"] if vl else cfg
    hf = load_tensors(folder)
    tpre = "language_model.model." if vl else "model."
    nq, nkv, hd = tc["num_attention_heads"], tc["num_key_value_heads"], tc["head_dim"]
    ours = {}  # name -> (global tensor, rule)
    ours["text.embed.weight"] = (hf[tpre + "embed_tokens.weight"], "vocab")
    for i in range(tc["num_hidden_layers"]):
        t, o = f"{tpre}layers.{i}.", f"text.layers.{i}."
        q = hf[t + "self_attn.q_proj.weight"].reshape(nkv, nq // nkv * hd, -1)
        k = hf[t + "self_attn.k_proj.weight"].reshape(nkv, hd, -1)
        v = hf[t + "self_attn.v_proj.weight"].reshape(nkv, hd, -1)
        ours[o + "attn.qkv.weight"] = (torch.cat([q, k, v], dim=1).reshape((nq + 2 * nkv) * hd, -1), "rows")
        ours[o + "attn.o.weight"] = (hf[t + "self_attn.o_proj.weight"], "cols")
        gate, up = hf[t + "mlp.gate_proj.weight"], hf[t + "mlp.up_proj.weight"]
        ours[o + "mlp.gate_up.weight"] = ((gate, up), "gate_up")
        ours[o + "mlp.down.weight"] = (hf[t + "mlp.down_proj.weight"], "cols")
        for a, b in [("input_norm", "input_layernorm"), ("attn.q_norm", "self_attn.q_norm"),
                     ("attn.k_norm", "self_attn.k_norm"), ("post_attn_norm", "post_attention_layernorm"),
                     ("pre_mlp_norm", "pre_feedforward_layernorm"),
                     ("post_mlp_norm", "post_feedforward_layernorm")]:
            ours[o + a + ".weight"] = (hf[t + b + ".weight"], "rep")
    ours["text.final_norm.weight"] = (hf[tpre + "norm.weight"], "rep")
    if vl:
        vp = "vision_tower."
        rep = {"vision.patch_embed.weight": vp + "embeddings.patch_embedding.weight",
               "vision.patch_embed.bias": vp + "embeddings.patch_embedding.bias",
               "vision.pos_embed.weight": vp + "embeddings.position_embedding.weight",
               "vision.post_norm.weight": vp + "post_layernorm.weight",
               "vision.post_norm.bias": vp + "post_layernorm.bias",
               "projector.norm.weight": "multi_modal_projector.mm_soft_emb_norm.weight",
               "projector.proj.weight": "multi_modal_projector.mm_input_projection_weight"}
        for i in range(cfg["vision_config"]["num_hidden_layers"]):
            t, o = f"{vp}encoder.layers.{i}.", f"vision.layers.{i}."
            for wb in ["weight", "bias"]:
                rep[o + "ln1." + wb] = t + "layer_norm1." + wb
                rep[o + "ln2." + wb] = t + "layer_norm2." + wb
                rep[o + "attn.o." + wb] = t + "self_attn.out_proj." + wb
                rep[o + "mlp.fc1." + wb] = t + "mlp.fc1." + wb
                rep[o + "mlp.fc2." + wb] = t + "mlp.fc2." + wb
                ours[o + "attn.qkv." + wb] = (torch.cat([hf[t + f"self_attn.{x}_proj.{wb}"] for x in "qkv"]), "rep")
        for a, b in rep.items():
            ours[a] = (hf[b], "rep")
    out = {}
    for name, (g, rule) in ours.items():
        for r in range(tp):
            if rule == "rep":
                s = g
            elif rule == "rows":
                s = g.chunk(tp, dim=0)[r]
            elif rule == "cols":
                s = g.chunk(tp, dim=1)[r]
            elif rule == "gate_up":
                s = torch.cat([g[0].chunk(tp, dim=0)[r], g[1].chunk(tp, dim=0)[r]])
            elif rule == "vocab":
                pad = (-g.shape[0]) % tp
                s = torch.cat([g, torch.zeros(pad, g.shape[1], dtype=g.dtype)]).chunk(tp, dim=0)[r]
            out[f"rank{r}/{name}"] = s.contiguous().clone()
    save_file(out, out_path)
    print("expected_shards:", len(out), "tensors")


if __name__ == "__main__":
    main()
