#!/usr/bin/env python3
"""Independent references for the C++ Gemma 4 parity tests (transformers 5.17).

Builds a tiny random Gemma4ForCausalLM (MoE, K=V global layers with their own
head size and KV head count, proportional RoPE, final soft-capping) in fp32
with eager attention, RE-RANDOMISES every parameter and persistent buffer
(HF one-initialises the norms, router scales and layer_scalar, which would hide
a wrong mapping or a (1 + w) mix-up), and writes OUT/gemma4_text/:
  hf/config.json, hf/model.safetensors   save_pretrained (HF names)
  io.safetensors   input_ids [2, L] (row 1 left-padded), attention_mask,
                   logits (plain forward, fp32), greedy_prompt, greedy_tokens
                   (model.generate, greedy), grad_probe and grad.<HF name>
                   (d sum(logits * grad_probe) / d parameter),
                   router_counts [moe layers, E] (tokens per expert over the
                   forward, from HF's own router outputs), and the saved model
                   loaded in bfloat16 (from_pretrained(dtype=bfloat16)):
                   logits_bf16 (as fp32) and greedy_tokens_bf16
and OUT/gemma4_vl/: a tiny Gemma4ForConditionalGeneration (vision tower with
standardisation, use_bidirectional_attention "vision") saved the same way, and
io.safetensors with input_ids [2, 30] (an image per row: 6x4 patches padded to
32, and 4x8), pixel_values [2, 32, 48], image_positions, logits, the
embedded image_features and logits_bf16 (the model loaded in bfloat16, the
pixels cast to it).
Regeneration is skipped when OUT/gemma4_stamp holds this script's hash and the
bf16 device (GEMMA_TEST_DEVICE; the bf16 references run there).
"""
import argparse
import hashlib
import os
import shutil

import torch
from safetensors.torch import save_file

HERE = os.path.abspath(__file__)


def script_hash():
    with open(HERE, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tiny_text_config(**extra):
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(**extra,
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                     "full_attention"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        global_head_dim=32, num_global_key_value_heads=1, attention_k_eq_v=True,
        sliding_window=8,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional",
                               "partial_rotary_factor": 0.25, "rope_theta": 1e6},
        },
        enable_moe_block=True, num_experts=4, top_k_experts=2,
        moe_intermediate_size=32, hidden_size_per_layer_input=0,
        num_kv_shared_layers=0, use_double_wide_mlp=False,
        final_logit_softcapping=30.0, max_position_embeddings=512,
        rms_norm_eps=1e-6, tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


# The bf16 references run where the tests run (GEMMA_TEST_DEVICE, as the C++
# suite): bf16 rounding differs between the CPU's and cuBLAS's GEMMs, and
# this tiny random MoE amplifies it (HF's own bf16 run is only ~0.97 cosine
# to its fp32 one), so a CPU reference would measure the devices' difference
# rather than ours from transformers. The fp32 references stay on the CPU.
BF16_DEVICE = os.environ.get("GEMMA_TEST_DEVICE") or "cpu"


def load_bfloat16(cls, folder):
    """The saved model in bfloat16 with eager attention, via from_pretrained,
    on BF16_DEVICE."""
    model = cls.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="eager")
    return model.to(BF16_DEVICE).eval()


def rerandomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("scale"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)  # U(0.5, 1.5)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
        state = model.state_dict()
        for name, b in model.named_buffers():
            if name not in state:  # non-persistent: derived constants
                continue
            if name.endswith("std_bias"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.5)
            else:
                assert name.endswith(("layer_scalar", "std_scale")), name
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


def stamp_text():
    """What the references depend on: this script and the bf16 device."""
    return script_hash() + " " + BF16_DEVICE


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    stamp = os.path.join(args.out, "gemma4_stamp")
    if os.path.exists(stamp) and open(stamp).read() == stamp_text():
        print("gemma4 references up to date")
        return
    from transformers import Gemma4ForCausalLM

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    cfg = tiny_text_config()
    cfg._attn_implementation = "eager"
    model = Gemma4ForCausalLM(cfg).eval().to(torch.float32)
    rerandomise(model, gen)

    case = os.path.join(args.out, "gemma4_text")
    shutil.rmtree(case, ignore_errors=True)
    model.save_pretrained(os.path.join(case, "hf"), safe_serialization=True)

    L = 20  # > sliding_window so the window bites
    ids = torch.randint(3, 512, (2, L), generator=gen)
    mask = torch.ones(2, L, dtype=torch.int64)
    mask[1, :5] = 0
    ids[1, :5] = 0

    counts = []
    hooks = []
    for layer in model.model.layers:
        def hook(mod, inp, out, store=counts):
            store.append(torch.bincount(out[2].reshape(-1), minlength=cfg.num_experts))
        hooks.append(layer.router.register_forward_hook(hook))
    out = model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    logits = out.logits.detach()

    probe = torch.randn(logits.shape, generator=gen)
    model.zero_grad()
    (model(input_ids=ids, attention_mask=mask).logits * probe).sum().backward()
    grads = {f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}

    prompt = ids[:1, :12].clone()
    with torch.no_grad():
        gen_out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                 max_new_tokens=8, do_sample=False, min_new_tokens=8,
                                 pad_token_id=0)
    # The same forward and greedy decode in bfloat16, the model loaded as a
    # user loads it (from_pretrained with dtype: the rotary inverse
    # frequencies stay fp32, as ours do; model.to(bfloat16) would round them).
    model_bf16 = load_bfloat16(Gemma4ForCausalLM, os.path.join(case, "hf"))
    with torch.no_grad():
        dev = BF16_DEVICE
        logits_bf16 = model_bf16(input_ids=ids.to(dev),
                                 attention_mask=mask.to(dev)).logits.float().cpu()
        gen_bf16 = model_bf16.generate(prompt.to(dev),
                                       attention_mask=torch.ones_like(prompt).to(dev),
                                       max_new_tokens=8, do_sample=False,
                                       min_new_tokens=8, pad_token_id=0).cpu()
    tensors = {
        "input_ids": ids, "attention_mask": mask, "logits": logits,
        "grad_probe": probe, "greedy_prompt": prompt,
        "greedy_tokens": gen_out[:, prompt.shape[1]:].contiguous(),
        "router_counts": torch.stack(counts).to(torch.int64),
        "logits_bf16": logits_bf16,
        "greedy_tokens_bf16": gen_bf16[:, prompt.shape[1]:].contiguous(),
    }
    tensors.update(grads)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(case, "io.safetensors"))
    print("wrote", case)
    make_vl_case(args.out, gen)
    make_image_case(args.out)
    with open(stamp, "w") as f:
        f.write(stamp_text())


def make_vl_case(out, gen):
    """A tiny Gemma4ForConditionalGeneration with two non-square images, one
    padded (6x4 patches padded to 32, 4x8 patches), one per batch row."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4VisionConfig

    text = tiny_text_config(use_bidirectional_attention="vision")
    vision = Gemma4VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, patch_size=4, pooling_kernel_size=2,
        position_embedding_size=64, rope_parameters={"rope_type": "axial", "rope_theta": 100.0},
        standardize=True, use_clipped_linears=False, rms_norm_eps=1e-6)
    cfg = Gemma4Config(text_config=text, vision_config=vision, audio_config=None,
                       image_token_id=500, boi_token_id=498, eoi_token_id=499,
                       video_token_id=497, audio_token_id=496, boa_token_id=495,
                       eoa_token_index=494, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    torch.manual_seed(1)
    model = Gemma4ForConditionalGeneration(cfg).eval().to(torch.float32)
    rerandomise(model, gen)
    case = os.path.join(out, "gemma4_vl")
    shutil.rmtree(case, ignore_errors=True)
    model.save_pretrained(os.path.join(case, "hf"), safe_serialization=True)

    def grid(w, h, pmax):
        pos = [(x, y) for y in range(h) for x in range(w)]
        pos += [(-1, -1)] * (pmax - len(pos))
        return torch.tensor(pos, dtype=torch.int64)

    positions = torch.stack([grid(6, 4, 32), grid(4, 8, 32)])
    pixels = torch.rand(2, 32, 48, generator=gen)
    pixels[0, 24:] = 0.0  # padding patches as the processor leaves them
    L = 30
    ids = torch.randint(3, 490, (2, L), generator=gen)
    ids[:, 0] = 2
    for row, (start, n) in enumerate([(4, 6), (9, 8)]):
        ids[row, start - 1] = 498
        ids[row, start:start + n] = 500
        ids[row, start + n] = 499
    mm = (ids == 500).to(torch.int64)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels, image_position_ids=positions,
                       mm_token_type_ids=mm, attention_mask=mask).logits
        soft = model.model.get_image_features(pixels, positions, return_dict=True).pooler_output
        # The same forward in bfloat16, loaded as in main().
        model_bf16 = load_bfloat16(Gemma4ForConditionalGeneration, os.path.join(case, "hf"))
        dev = BF16_DEVICE
        logits_bf16 = model_bf16(input_ids=ids.to(dev),
                                 pixel_values=pixels.to(dev, torch.bfloat16),
                                 image_position_ids=positions.to(dev),
                                 mm_token_type_ids=mm.to(dev),
                                 attention_mask=mask.to(dev)).logits.float().cpu()
    save_file({"input_ids": ids, "pixel_values": pixels, "image_positions": positions,
               "logits": logits.contiguous(), "image_features": torch.cat(soft).contiguous(),
               "logits_bf16": logits_bf16.contiguous()},
              os.path.join(case, "io.safetensors"))
    print("wrote", case)


def make_image_case(out):
    """Gemma4ImageProcessorPil outputs for random RGB images of awkward sizes
    (down- and up-scaling, a very thin one): OUT/gemma4_image/io.safetensors
    with image{i} [h, w, 3] uint8 and pixel_values{i}, positions{i},
    soft_tokens{i}, budget{i} (max_soft_tokens)."""
    import numpy as np
    from PIL import Image
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    rng = np.random.default_rng(5)
    cases = [((37, 300), 70), ((500, 300), 70), ((64, 64), 70), ((2000, 10), 70),
             ((480, 640), 280), ((48, 96), 140)]
    tensors = {}
    for i, ((h, w), budget) in enumerate(cases):
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        proc = Gemma4ImageProcessorPil(max_soft_tokens=budget)
        r = proc(images=[Image.fromarray(img)], return_tensors="pt")
        tensors[f"image{i}"] = torch.from_numpy(img.copy())
        tensors[f"pixel_values{i}"] = r["pixel_values"][0].to(torch.float32).contiguous()
        tensors[f"positions{i}"] = r["image_position_ids"][0].to(torch.int64).contiguous()
        tensors[f"soft_tokens{i}"] = torch.tensor([int(r["num_soft_tokens_per_image"][0])])
        tensors[f"budget{i}"] = torch.tensor([budget])
    case = os.path.join(out, "gemma4_image")
    os.makedirs(case, exist_ok=True)
    save_file(tensors, os.path.join(case, "io.safetensors"))
    print("wrote", case)


if __name__ == "__main__":
    main()
