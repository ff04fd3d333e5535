#!/usr/bin/env python3
"""What a batch-1 decode step's parts cost on this GPU, in PyTorch alone.

Run ON THE GPU MACHINE (no build needed):
    python3 bench/gpu/decode_parts.py [--preset 4b] [--cache 1024] [-o json]

Each part is captured in a CUDA graph and replayed, so launch overhead does
not count, and every layer gets its own weights (one layer's fit in the 50 MB
L2 and would fake the bandwidth). Prints, per part, microseconds per token
and the HBM bandwidth it reaches, then the whole step's GEMVs (the floor for
any decode built on cuBLAS GEMV) against the weight-read bound. This is the
baseline the decode numbers in bench/RESULTS.md are read against.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F

PRESETS = {
    # hidden, intermediate, layers, heads, kv heads, head_dim, vocab
    "4b": (2560, 10240, 34, 8, 4, 256, 262208),
    "12b": (3840, 15360, 48, 16, 8, 256, 262208),
    "27b": (5376, 21504, 62, 32, 16, 128, 262208),
}


def graph_time(fn, reps=20):
    """Seconds per call of fn, replayed from a CUDA graph (min of reps)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    best = float("inf")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(reps):
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="4b", choices=sorted(PRESETS))
    ap.add_argument("--cache", type=int, default=1024, help="static KV cache slots")
    ap.add_argument("--bandwidth", type=float, default=3.35e12, help="HBM bytes/s (H100 SXM)")
    ap.add_argument("-o", dest="output", default="text", choices=["text", "json"])
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decode_parts.py: needs a CUDA GPU")
    h, inter, layers, nq, nkv, hd, vocab = PRESETS[a.preset]
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    rows = []

    def report(name, seconds, nbytes, per_token_count=1):
        r = {"part": name, "us_per_token": 1e6 * seconds * per_token_count,
             "gb_per_s": nbytes / seconds / 1e9 if nbytes else None,
             "pct_of_bandwidth": 100 * nbytes / seconds / a.bandwidth if nbytes else None}
        rows.append(r)
        if a.output == "text":
            bw = f"{r['gb_per_s']:7.0f} GB/s ({r['pct_of_bandwidth']:4.1f}%)" if nbytes else ""
            print(f"{name:44s} {r['us_per_token']:9.1f} us/token  {bw}")

    shapes = {"qkv": ((nq + 2 * nkv) * hd, h), "o": (h, nq * hd),
              "gate_up": (2 * inter, h), "down": (h, inter)}
    x = {k: torch.randn(1, 1, s[1], device=dev, dtype=dt) for k, s in shapes.items()}
    w = {k: [torch.randn(*s, device=dev, dtype=dt) * 0.02 for _ in range(layers)]
         for k, s in shapes.items()}
    total_bytes = 0
    for k, s in shapes.items():
        nbytes = layers * s[0] * s[1] * 2
        total_bytes += nbytes
        t = graph_time(lambda k=k: [F.linear(x[k], wi) for wi in w[k]])
        report(f"F.linear {k} {s[1]}->{s[0]} x{layers}", t, nbytes)
    def all_gemv():
        for i in range(layers):
            for k in shapes:
                F.linear(x[k], w[k][i])
    t_layers = graph_time(all_gemv)
    report(f"all layer GEMVs in order ({layers} layers)", t_layers, total_bytes)
    head = torch.randn(vocab, h, device=dev, dtype=dt) * 0.02
    xh = torch.randn(1, 1, h, device=dev, dtype=dt)
    t_head = graph_time(lambda: F.linear(xh, head))
    report(f"F.linear lm_head {h}->{vocab}", t_head, vocab * h * 2)
    t_arg = graph_time(lambda: F.linear(xh, head).float().argmax(-1))
    report("lm_head + float + argmax", t_arg, vocab * h * 2)
    bound = (total_bytes + vocab * h * 2) / a.bandwidth
    gemv = t_layers + t_head
    if a.output == "text":
        print(f"GEMV floor: {1e3 * gemv:.2f} ms/token = {100 * bound / gemv:.1f}% of the "
              f"{1e3 * bound:.2f} ms weight-read bound ({1 / bound:.0f} tok/s)")

    # Decode attention over the static cache: q [1, nkv, g, hd] per KV head.
    g = nq // nkv
    c = a.cache
    q = torch.randn(1, nkv, g, hd, device=dev, dtype=dt)
    kc = [torch.randn(1, nkv, c, hd, device=dev, dtype=dt) for _ in range(layers)]
    vc = [torch.randn(1, nkv, c, hd, device=dev, dtype=dt) for _ in range(layers)]
    bias = torch.zeros(1, 1, 1, c, device=dev, dtype=dt)
    bias[..., c // 2:] = torch.finfo(dt).min
    kv_bytes = layers * 2 * nkv * c * hd * 2
    t = graph_time(lambda: [F.scaled_dot_product_attention(q, kc[i], vc[i], attn_mask=bias,
                                                           scale=hd ** -0.5) for i in range(layers)])
    report(f"SDPA decode, additive mask, cache {c} x{layers}", t, kv_bytes)
    boolmask = bias.eq(0)
    t = graph_time(lambda: [F.scaled_dot_product_attention(q, kc[i], vc[i], attn_mask=boolmask,
                                                           scale=hd ** -0.5) for i in range(layers)])
    report(f"SDPA decode, bool mask, cache {c} x{layers}", t, kv_bytes)
    qh = torch.randn(1, nq, 1, hd, device=dev, dtype=dt)
    t = graph_time(lambda: [F.scaled_dot_product_attention(qh, kc[i], vc[i], attn_mask=boolmask,
                                                           scale=hd ** -0.5, enable_gqa=True)
                            for i in range(layers)])
    report(f"SDPA decode, heads x 1 query, gqa, cache {c} x{layers}", t, kv_bytes)

    def eager_attn():
        for i in range(layers):
            s = torch.matmul(q, kc[i].transpose(2, 3)) * hd ** -0.5 + bias
            p = torch.softmax(s, -1, dtype=torch.float32).to(dt)
            torch.matmul(p, vc[i])
    t = graph_time(eager_attn)
    report(f"matmul-softmax-matmul decode, cache {c} x{layers}", t, kv_bytes)
    # The small per-layer kernels a step also runs: floor of one launch each.
    small = torch.randn(1, 1, h, device=dev, dtype=dt)
    t = graph_time(lambda: [small.add_(1.0) for _ in range(14 * layers)])
    report(f"one tiny kernel x {14 * layers} (14 a layer)", t, 0)
    if a.output == "json":
        print(json.dumps({"preset": a.preset, "cache": c, "rows": rows,
                          "gemv_floor_ms": 1e3 * gemv, "bound_ms": 1e3 * bound,
                          "device": torch.cuda.get_device_name()}))


if __name__ == "__main__":
    main()
