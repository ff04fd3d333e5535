"""The tensors of a Hugging Face checkpoint folder, read with the safetensors
library (not our reader), and a bit-for-bit comparison of two such sets: what
check_export.py, check_export_gemma4.py and expected_shards.py share."""
import json
import os

import torch
from safetensors import safe_open


def load_tensors(folder):
    """{name: tensor} of folder's model.safetensors, or of every shard its
    model.safetensors.index.json names; a name in two shards is an error."""
    index = os.path.join(folder, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values()))
             if os.path.exists(index) else ["model.safetensors"])
    out = {}
    for f in files:
        with safe_open(os.path.join(folder, f), "pt") as h:
            for k in h.keys():
                assert k not in out, f"{k} twice"
                out[k] = h.get_tensor(k)
    return out


def _bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def first_difference(a, b):
    """None when the sets a and b (name -> tensor) hold the same names, each with
    the same dtype, shape and bytes; else a message naming the first difference."""
    if set(a) != set(b):
        return (f"names differ: only in original {sorted(set(a) - set(b))[:5]}, "
                f"only in export {sorted(set(b) - set(a))[:5]}")
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{k}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        if not torch.equal(_bytes(x), _bytes(y)):
            return f"{k}: bytes differ"
    return None


def check_same_tensors(original, exported, fail):
    """Calls fail(message) unless the folders hold the same tensors bit for bit
    (see first_difference); returns how many tensors original holds."""
    a = load_tensors(original)
    mismatch = first_difference(a, load_tensors(exported))
    if mismatch:
        fail(mismatch)
    return len(a)
