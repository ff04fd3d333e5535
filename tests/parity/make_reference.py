#!/usr/bin/env python3
"""Builds the independent references for the C++ Gemma 3 parity tests.

For each case: a tiny random Gemma 3 (VL or text-only) model is built with
transformers (fp32, eager attention), EVERY parameter is re-randomised (HF
zero-inits the RMSNorm offsets and the projector, which would hide a wrong
mapping or a (1 + w) mix-up), and the case folder gets:
  config.json     the HF config (newer v5 shape, or the original release shape)
  model.safetensors, inputs.safetensors  the same weights and inputs, for the
                  `gemmactl local` tests
  weights.json/.bin  the weights in OUR names and fused layouts
                  (/work/briefs/MODEL_NAMES.md), converted here in Python
  grads.json/.bin d mean(logits * grad_probe) / d parameter, in our names
  io.json/.bin    inputs (input_ids, attention_mask, pixel_values,
                  token_type_ids), reference logits of a plain forward (fp32, and
                  bf16 as logits_bf16), and
                  the greedy continuation from model.generate
A .json/.bin pair is a raw little-endian blob plus an index
{name: {dtype, shape, offset, nbytes}} (dtype float32 or int64).

It also writes presets/{4b,12b,27b}/{sparse,full}.json: the hub-style sparse
config of each published model (original release shape) and transformers'
full Gemma3Config.to_dict() of it, for the C++ config tests.

Regeneration is skipped when OUT/stamp holds this script's hash.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

import torch

HERE = os.path.abspath(__file__)


def script_hash():
    with open(HERE, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---- raw tensor files ----------------------------------------------------------
def write_tensors(path_prefix, tensors):
    index, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        if t.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            t, dt = t.to(torch.float32), "float32"
        elif t.dtype in (torch.int64, torch.int32, torch.bool):
            t, dt = t.to(torch.int64), "int64"
        else:
            raise ValueError(f"{name}: unsupported dtype {t.dtype}")
        data = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        index[name] = {"dtype": dt, "shape": list(t.shape), "offset": offset, "nbytes": len(data)}
        blobs.append(data)
        offset += len(data)
    with open(path_prefix + ".bin", "wb") as f:
        for b in blobs:
            f.write(b)
    with open(path_prefix + ".json", "w") as f:
        json.dump(index, f, indent=1)


# ---- our names and fused layouts (independent of the C++ code) -----------------
def fuse_qkv_per_group(q, k, v, nq, nkv, hd):
    hidden = q.shape[1]
    g = nq // nkv
    q = q.reshape(nkv, g, hd, hidden)
    k = k.reshape(nkv, 1, hd, hidden)
    v = v.reshape(nkv, 1, hd, hidden)
    return torch.cat([q, k, v], dim=1).reshape((nq + 2 * nkv) * hd, hidden)


def text_to_ours(sd, prefix, tc):
    out = {"text.embed.weight": sd[prefix + "embed_tokens.weight"],
           "text.final_norm.weight": sd[prefix + "norm.weight"]}
    for i in range(tc.num_hidden_layers):
        p, o = f"{prefix}layers.{i}.", f"text.layers.{i}."
        out[o + "input_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[o + "attn.qkv.weight"] = fuse_qkv_per_group(
            sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"],
            sd[p + "self_attn.v_proj.weight"], tc.num_attention_heads,
            tc.num_key_value_heads, tc.head_dim)
        out[o + "attn.o.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[o + "attn.q_norm.weight"] = sd[p + "self_attn.q_norm.weight"]
        out[o + "attn.k_norm.weight"] = sd[p + "self_attn.k_norm.weight"]
        out[o + "post_attn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        out[o + "pre_mlp_norm.weight"] = sd[p + "pre_feedforward_layernorm.weight"]
        out[o + "mlp.gate_up.weight"] = torch.cat(
            [sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]], dim=0)
        out[o + "mlp.down.weight"] = sd[p + "mlp.down_proj.weight"]
        out[o + "post_mlp_norm.weight"] = sd[p + "post_feedforward_layernorm.weight"]
    return out


def vision_to_ours(sd, prefix, vc):
    out = {}
    e = prefix + "embeddings."
    out["vision.patch_embed.weight"] = sd[e + "patch_embedding.weight"]
    out["vision.patch_embed.bias"] = sd[e + "patch_embedding.bias"]
    out["vision.pos_embed.weight"] = sd[e + "position_embedding.weight"]
    for i in range(vc.num_hidden_layers):
        p, o = f"{prefix}encoder.layers.{i}.", f"vision.layers.{i}."
        for ours, theirs in (("ln1", "layer_norm1"), ("ln2", "layer_norm2"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                             ("attn.o", "self_attn.out_proj")):
            out[o + ours + ".weight"] = sd[p + theirs + ".weight"]
            out[o + ours + ".bias"] = sd[p + theirs + ".bias"]
        for kind in ("weight", "bias"):
            out[o + "attn.qkv." + kind] = torch.cat(
                [sd[p + f"self_attn.{x}_proj.{kind}"] for x in "qkv"], dim=0)
    out["vision.post_norm.weight"] = sd[prefix + "post_layernorm.weight"]
    out["vision.post_norm.bias"] = sd[prefix + "post_layernorm.bias"]
    return out


# ---- model construction ----------------------------------------------------------
def rerandomise(model, seed):
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    gen = torch.Generator().manual_seed(seed)
    rms = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, Gemma3RMSNorm):
            rms.add((mname + ".weight").lstrip("."))
    seen = set()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) in seen:  # tied lm_head
                continue
            seen.add(id(p))
            if name in rms:  # the "w" of (1 + w): far from 0 so a dropped +1 shows
                p.copy_(torch.empty_like(p).uniform_(-0.5, 0.5, generator=gen))
            elif p.dim() == 1 and "norm" in name and name.endswith("weight"):  # LayerNorm
                p.copy_(1.0 + torch.empty_like(p).uniform_(-0.2, 0.2, generator=gen))
            elif p.dim() == 1:  # biases
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.08)
    return rms


def build(case):
    from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig
    cfg_dict = case["config"]
    if cfg_dict["model_type"] == "gemma3":
        kw = {k: v for k, v in cfg_dict.items() if k not in ("model_type", "architectures")}
        config = Gemma3Config(**kw)
        config.text_config._attn_implementation = "eager"
        model = Gemma3ForConditionalGeneration(config)
    else:
        kw = {k: v for k, v in cfg_dict.items() if k not in ("model_type", "architectures")}
        config = Gemma3TextConfig(**kw)
        model = Gemma3ForCausalLM(config)
    model.config._attn_implementation = "eager"
    model.set_attn_implementation("eager")
    model = model.to(torch.float32).eval()
    return config, model


def to_ours(model, config):
    return to_ours_from(model.state_dict(), config)


def to_ours_from(sd, config):
    if config.model_type == "gemma3":
        tc, vc = config.text_config, config.vision_config
        out = text_to_ours(sd, "model.language_model.", tc)
        out.update(vision_to_ours(sd, "model.vision_tower.", vc))
        out["projector.norm.weight"] = sd["model.multi_modal_projector.mm_soft_emb_norm.weight"]
        out["projector.proj.weight"] = sd["model.multi_modal_projector.mm_input_projection_weight"]
    else:
        out = text_to_ours(sd, "model.", config)
    return {k: v.clone() for k, v in out.items()}


# ---- cases ---------------------------------------------------------------------
def vl_config(**over):
    text = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                query_pre_attn_scalar=24, sliding_window=24,
                layer_types=["sliding_attention", "full_attention", "sliding_attention",
                             "full_attention"],
                rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                    "rope_theta": 1e6},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
                max_position_embeddings=512, rms_norm_eps=1e-6)
    text.update(over.pop("text", {}))
    for k in over.pop("drop_text", []):
        text.pop(k)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  image_size=56, patch_size=7, layer_norm_eps=1e-6, vision_use_head=False)
    vision.update(over.pop("vision", {}))
    cfg = dict(model_type="gemma3", architectures=["Gemma3ForConditionalGeneration"],
               text_config=text, vision_config=vision, mm_tokens_per_image=16,
               image_token_index=500, boi_token_index=498, eoi_token_index=499)
    cfg.update(over)
    return cfg


def image_span(cfg):
    n = cfg["mm_tokens_per_image"]
    return [cfg["boi_token_index"]] + [cfg["image_token_index"]] * n + [cfg["eoi_token_index"]]


def rand_text(gen, n, vocab):
    return torch.randint(3, min(vocab, 490), (n,), generator=gen).tolist()


def make_cases():
    gen = torch.Generator().manual_seed(1234)
    cases = []

    # 1. One image, sequence (48) longer than the window (24), image block 16 < W.
    cfg = vl_config()
    ids = [2] + rand_text(gen, 10, 512) + [108] + image_span(cfg) + rand_text(gen, 19, 512)
    cases.append(dict(name="vl_one_image", config=cfg, input_ids=[ids], images=1))

    # 2. Two images in one row, batch of two with left padding (row 1: one image).
    cfg = vl_config()
    row0 = [2] + rand_text(gen, 4, 512) + image_span(cfg) + rand_text(gen, 5, 512) + \
        image_span(cfg) + rand_text(gen, 6, 512)
    row1 = [2] + rand_text(gen, 8, 512) + image_span(cfg) + rand_text(gen, 12, 512)
    pad = len(row0) - len(row1)
    cases.append(dict(name="vl_two_images_batch2", config=cfg,
                      input_ids=[row0, [0] * pad + row1],
                      attention_mask=[[1] * len(row0), [0] * pad + [1] * len(row1)], images=3))

    # 3. Original release config shape (rope_theta / rope_local_base_freq /
    #    rope_scaling / sliding_window_pattern), odd head counts nq=6 nkv=2,
    #    window (10) shorter than the image block (16), image token id >= vocab.
    cfg = vl_config(text=dict(num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                              hidden_size=48, sliding_window=10, sliding_window_pattern=3,
                              num_hidden_layers=5, rope_theta=500000.0,
                              rope_local_base_freq=20000.0,
                              rope_scaling={"rope_type": "linear", "factor": 4.0}),
                    drop_text=["layer_types", "rope_parameters"], image_token_index=600)
    ids = [2] + rand_text(gen, 6, 512) + image_span(cfg) + rand_text(gen, 14, 512)
    cases.append(dict(name="vl_legacy_odd_heads_oov_image", config=cfg, input_ids=[ids], images=1))

    # 4. Text only (Gemma3ForCausalLM), nq=3 nkv=1, final soft-capping, window 8,
    #    batch of two with left padding.
    cfg = dict(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], vocab_size=384,
               hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=3,
               num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=20, sliding_window=8,
               sliding_window_pattern=2, rope_theta=1e6, rope_local_base_freq=1e4,
               rope_scaling={"rope_type": "linear", "factor": 8.0},
               final_logit_softcapping=30.0, max_position_embeddings=512)
    row0 = [2] + rand_text(gen, 19, 384)
    row1 = [2] + rand_text(gen, 13, 384)
    pad = len(row0) - len(row1)
    cases.append(dict(name="text_softcap_batch2", config=cfg, input_ids=[row0, [0] * pad + row1],
                      attention_mask=[[1] * len(row0), [0] * pad + [1] * len(row1)], images=0))

    # 5. Text only, newer config shape, plain multi-head (nq = nkv = 2), no padding.
    cfg = dict(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], vocab_size=256,
               hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
               num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=6,
               layer_types=["sliding_attention", "sliding_attention", "full_attention"],
               rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
               max_position_embeddings=512)
    cases.append(dict(name="text_mha", config=cfg, input_ids=[[2] + rand_text(gen, 15, 256)],
                      images=0))
    # 6. For tensor parallelism up to 4 ranks: 8 query / 4 KV heads, a
    #    vocabulary (503) that the vocab-parallel layers must pad, two images
    #    in one row, a left-padded second row (52 tokens: splits 4 ways).
    cfg = vl_config(text=dict(vocab_size=503, num_attention_heads=8, num_key_value_heads=4,
                              head_dim=8, intermediate_size=96))
    row0 = [2] + rand_text(gen, 4, 503) + image_span(cfg) + rand_text(gen, 5, 503) + \
        image_span(cfg) + rand_text(gen, 6, 503)
    row1 = [2] + rand_text(gen, 8, 503) + image_span(cfg) + rand_text(gen, 12, 503)
    pad = len(row0) - len(row1)
    cases.append(dict(name="vl_tp4_vocab503", config=cfg, input_ids=[row0, [0] * pad + row1],
                      attention_mask=[[1] * len(row0), [0] * pad + [1] * len(row1)], images=3))
    return cases


def run_case(case, out_dir, max_new_tokens=8):
    from transformers import GenerationConfig
    for attempt in range(20):
        seed = 100 + attempt
        torch.manual_seed(seed)
        config, model = build(case)
        rerandomise(model, seed)
        ids = torch.tensor(case["input_ids"], dtype=torch.long)
        inputs = {"input_ids": ids}
        if "attention_mask" in case:
            inputs["attention_mask"] = torch.tensor(case["attention_mask"], dtype=torch.long)
        if case["images"]:
            vc = config.vision_config
            g = torch.Generator().manual_seed(seed)
            inputs["pixel_values"] = torch.rand(
                (case["images"], 3, vc.image_size, vc.image_size), generator=g) * 2 - 1
            inputs["token_type_ids"] = (ids == config.image_token_index).long()
        with torch.no_grad():
            logits = model(**inputs).logits
            gc = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens,
                                  eos_token_id=None, pad_token_id=0, bos_token_id=2,
                                  top_k=None, top_p=None, temperature=None)
            gen = model.generate(**inputs, generation_config=gc, output_scores=True,
                                 return_dict_in_generate=True)
        new_tokens = gen.sequences[:, ids.shape[1]:]
        # Reject near-ties so greedy parity is meaningful at 1e-4 tolerance.
        gaps = []
        for s in gen.scores:
            top2 = s.topk(2, dim=-1).values
            gaps.append(((top2[:, 0] - top2[:, 1]) / s.abs().max()).min().item())
        distinct = min(len(set(row)) for row in new_tokens.tolist())
        if os.environ.get("PARITY_DEBUG"):
            print(case["name"], seed, min(gaps), distinct, new_tokens.tolist())
        if min(gaps) > 1e-3 and new_tokens.shape[1] == max_new_tokens:
            break
    else:
        raise RuntimeError(f"{case['name']}: no seed without a near-tie in greedy decoding")

    d = os.path.join(out_dir, case["name"])
    os.makedirs(d, exist_ok=True)
    cfg_json = dict(case["config"])
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=1)
    ours = to_ours(model, config)
    write_tensors(os.path.join(d, "weights"), ours)
    # The same weights and inputs as safetensors (what `gemmactl local` reads).
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in ours.items()}, os.path.join(d, "model.safetensors"))
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(d, "inputs.safetensors"))
    # The model as transformers saves it: C++ loads it straight from HF, and
    # after HF -> our checkpoint (TP=2) conversion, and must give the same logits.
    model.save_pretrained(os.path.join(d, "hf"))
    # Gradients of a fixed random linear functional of the logits (the training
    # path): loss = mean(logits * probe), every parameter's grad in our layout.
    probe = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed + 1))
    model.zero_grad()
    (model(**inputs).logits * probe).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    write_tensors(os.path.join(d, "grads"), to_ours_from(grads, config))
    io = dict(inputs)
    io["logits"] = logits
    io["grad_probe"] = probe
    # The same forward in bfloat16 (HF casts weights; pixel values follow).
    with torch.no_grad():
        bf = dict(inputs)
        if "pixel_values" in bf:
            bf["pixel_values"] = bf["pixel_values"].to(torch.bfloat16)
        io["logits_bf16"] = model.to(torch.bfloat16)(**bf).logits.float()
    model.to(torch.float32)
    io["greedy_tokens"] = new_tokens
    # The logits HF's cached decode computed at each greedy step: [B, N, V].
    io["greedy_step_logits"] = torch.stack(list(gen.scores), dim=1)
    write_tensors(os.path.join(d, "io"), io)
    print(f"{case['name']}: seed {seed}, logits {tuple(logits.shape)}, "
          f"max|logit| {logits.abs().max().item():.3f}, min top-2 gap {min(gaps):.2e}, "
          f"greedy {new_tokens.tolist()}")


# ---- presets ---------------------------------------------------------------------
PRESETS = {
    "4b": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34),
    "12b": dict(hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
                num_attention_heads=16, num_key_value_heads=8),
    "27b": dict(hidden_size=5376, intermediate_size=21504, num_hidden_layers=62,
                num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                query_pre_attn_scalar=168),
}


def write_presets(out_dir):
    from transformers import Gemma3Config
    for name, text in PRESETS.items():
        text = dict(text, model_type="gemma3_text", sliding_window=1024,
                    rope_scaling={"factor": 8.0, "rope_type": "linear"})
        sparse = {"architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999,
                  "eoi_token_index": 256000, "eos_token_id": [1, 106],
                  "image_token_index": 262144, "initializer_range": 0.02,
                  "mm_tokens_per_image": 256, "model_type": "gemma3", "text_config": text,
                  "torch_dtype": "bfloat16",
                  "vision_config": {"hidden_size": 1152, "image_size": 896,
                                    "intermediate_size": 4304,
                                    "model_type": "siglip_vision_model",
                                    "num_attention_heads": 16, "num_hidden_layers": 27,
                                    "patch_size": 14, "vision_use_head": False}}
        kw = {k: v for k, v in json.loads(json.dumps(sparse)).items()
              if k not in ("model_type", "architectures", "torch_dtype")}
        full = Gemma3Config(**kw).to_dict()
        d = os.path.join(out_dir, "presets", name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "sparse.json"), "w") as f:
            json.dump(sparse, f, indent=1)
        with open(os.path.join(d, "full.json"), "w") as f:
            json.dump(full, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = ap.parse_args()
    stamp = os.path.join(args.out, "stamp")
    h = script_hash()
    if not args.force and os.path.exists(stamp) and open(stamp).read().strip() == h:
        print(f"{args.out}: up to date")
        return 0
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    torch.set_num_threads(1)
    import transformers
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    write_presets(tmp)
    for case in make_cases():
        run_case(case, tmp)
    with open(os.path.join(tmp, "stamp"), "w") as f:
        f.write(h)
    shutil.rmtree(args.out, ignore_errors=True)
    os.rename(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
