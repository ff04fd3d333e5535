#!/usr/bin/env python3
"""The transformers side of bench/model_bench.cc: the same Gemma 3 VL config
(config.json written by `model_bench --write-config DIR`), random weights, the
same token layout, sdpa attention; prints one JSON object with the same fields.

  python3 bench/hf_model_bench.py --config DIR --mode sft --seq 4096 --images 1
  python3 bench/hf_model_bench.py --config DIR --mode decode --new-tokens 256
"""
import argparse
import json
import time

import torch
import transformers


def make_inputs(cfg, batch, seq, images, dev, dtype):
    tc = cfg.text_config
    row = [tc.bos_token_id] + [1000 + i for i in range(16)]
    for _ in range(images):
        row += [cfg.boi_token_id] + [cfg.image_token_id] * cfg.mm_tokens_per_image + [cfg.eoi_token_id]
    while len(row) < seq:
        row.append(3000 + len(row) % 20000)
    ids = torch.tensor([row] * batch, device=dev)
    out = {"input_ids": ids}
    if images:
        s = cfg.vision_config.image_size
        out["pixel_values"] = (torch.rand(batch * images, 3, s, s) * 2 - 1).to(dev, dtype)
        out["token_type_ids"] = (ids == cfg.image_token_id).long()
    return out


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def profile_step(step, dev, out_dir):
    """One step under torch.profiler: kernels.csv (GPU time per kernel name,
    most first, the columns of bench/kineto_profile.cc) and the top rows."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        step()
        sync(dev)
    totals = {}
    for e in p.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            t = totals.setdefault(e.name, [0.0, 0])
            t[0] += e.time_range.elapsed_us()
            t[1] += 1
    all_us = sum(t[0] for t in totals.values())
    rows = sorted(totals.items(), key=lambda kv: -kv[1][0])
    print(f"== transformers kernels: {all_us / 1e3:.2f} ms of GPU time per step")
    with open(f"{out_dir}/kernels.csv", "w") as f:
        f.write("rank,total_ms,pct,count,avg_us,name\n")
        for i, (name, (us, n)) in enumerate(rows):
            name = name.replace('"', "'")
            f.write(f'{i + 1},{us / 1e3},{100 * us / all_us},{n},{us / n},"{name}"\n')
            if i < 30:
                print(f"{i + 1:3d} {us / 1e3:8.2f} ms {100 * us / all_us:5.1f}% {n:6d}  {name[:110]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--mode", default="sft", choices=["sft", "lora", "decode"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--profile", default="",
                    help="sft/lora: profile one extra step into this directory (kernels.csv)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.dtype == "bfloat16" else torch.float32
    cfg = transformers.Gemma3Config.from_pretrained(a.config)
    cfg._attn_implementation = a.attn
    torch.manual_seed(0)
    with torch.device(dev):
        model = transformers.Gemma3ForConditionalGeneration(cfg).to(dtype)
    out = {"impl": "transformers", "mode": a.mode, "device": a.device, "dtype": a.dtype,
           "attention": a.attn, "layers": cfg.text_config.num_hidden_layers,
           "params": sum(p.numel() for p in model.parameters())}
    if a.mode in ("sft", "lora"):
        model.train()
        if a.mode == "lora":
            import peft
            lcfg = peft.LoraConfig(r=a.lora_rank, lora_alpha=a.lora_rank, lora_dropout=0.0,
                                   # the language model's projections only, as ours
                                   target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj"
                                                  r"|o_proj|gate_proj|up_proj|down_proj)")
            model = peft.get_peft_model(model, lcfg)
        inp = make_inputs(cfg, a.batch, a.seq, a.images, dev, dtype)
        labels = inp["input_ids"].clone()
        labels[(labels == cfg.image_token_id) | (labels == cfg.boi_token_id)] = -100
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1,
                                fused=dev.type == "cuda")

        def step():
            loss = model(**inp, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(a.warmup):
            step()
        sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        sync(dev)
        dt = (time.perf_counter() - t0) / a.steps
        out.update(step_s=dt, tokens_per_s=a.batch * a.seq / dt, seq=a.seq, batch=a.batch,
                   images=a.images,
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0)
        if a.profile:
            profile_step(step, dev, a.profile)
    else:
        model.eval()
        inp = make_inputs(cfg, 1, a.prompt, a.images, dev, dtype)

        def timed(n):
            sync(dev)
            t0 = time.perf_counter()
            with torch.no_grad():
                r = model.generate(**inp, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            sync(dev)
            assert r.shape[1] - inp["input_ids"].shape[1] == n
            return time.perf_counter() - t0

        for _ in range(a.warmup):
            timed(8)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t1 = tn = 1e30
        for _ in range(max(1, a.steps // 5)):
            t1 = min(t1, timed(1))
            tn = min(tn, timed(a.new_tokens + 1))
        out.update(prefill_s=t1, decode_tokens_per_s=a.new_tokens / (tn - t1), prompt=a.prompt,
                   new_tokens=a.new_tokens,
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
