#!/usr/bin/env python3
"""safetensors interop with the reference library.

  st_interop.py write FILE JSON   write FILE with safetensors; JSON lists each
                                  tensor's dtype, shape and bytes (hex)
  st_interop.py check FILE JSON   load FILE with safetensors and compare with JSON
                                  (written by our C++ test); exit 1 on a mismatch
"""
import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
         torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
         torch.uint8: "U8", torch.bool: "BOOL"}


def raw(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()


METADATA = {"who": "python", "purpose": "interop"}


def interop_tensors():
    """One small tensor per dtype (a scalar and an empty one too), seeded."""
    g = torch.Generator().manual_seed(7)
    return {
        "a.f32": torch.randn(3, 5, generator=g),
        "b.f16": torch.randn(4, 2, generator=g).half(),
        "c.bf16": torch.randn(2, 3, 2, generator=g).bfloat16(),
        "d.f64": torch.randn(3, generator=g).double(),
        "e.i64": torch.arange(-3, 4, dtype=torch.int64),
        "f.i32": torch.arange(10, dtype=torch.int32).reshape(2, 5),
        "g.i16": torch.arange(-2, 2, dtype=torch.int16),
        "h.i8": torch.arange(-4, 4, dtype=torch.int8),
        "i.u8": torch.arange(0, 250, 25, dtype=torch.uint8),
        "j.bool": torch.tensor([True, False, True]),
        "k.scalar": torch.tensor(2.5),
        "l.empty": torch.zeros(0, 4),
    }


def write(path, json_path):
    t = interop_tensors()
    save_file(t, path, metadata=METADATA)
    desc = {k: {"dtype": NAMES[v.dtype], "shape": list(v.shape), "hex": raw(v)} for k, v in t.items()}
    json.dump({"tensors": desc, "metadata": METADATA}, open(json_path, "w"))


def check(path, json_path):
    want = json.load(open(json_path))
    with safe_open(path, "pt") as f:
        if (f.metadata() or {}) != want["metadata"]:
            sys.exit(f"metadata {f.metadata()} != {want['metadata']}")
        if set(f.keys()) != set(want["tensors"]):
            sys.exit(f"keys {sorted(f.keys())} != {sorted(want['tensors'])}")
        for k, w in want["tensors"].items():
            t = f.get_tensor(k)
            if NAMES[t.dtype] != w["dtype"] or list(t.shape) != w["shape"] or raw(t) != w["hex"]:
                sys.exit(f"{k}: {NAMES[t.dtype]} {list(t.shape)} {raw(t)} differs from "
                         f"{w['dtype']} {w['shape']} {w['hex']}")
    print("st_interop: OK", len(want["tensors"]), "tensors")


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](sys.argv[2], sys.argv[3])
