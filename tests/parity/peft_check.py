#!/usr/bin/env python3
"""Loads an adapter folder exported by gemma (ExportPeftAdapter) with the real
`peft` on the HF model it was made for, and writes peft's logits.

The HF class follows config.json's model_type: gemma3 / gemma3_text ->
Gemma3ForConditionalGeneration / Gemma3ForCausalLM, gemma4 / gemma4_text ->
Gemma4ForConditionalGeneration / Gemma4ForCausalLM. --inputs holds the
forward's keyword arguments under their HF names.

Checks on the way (exit status 1 with a message on failure):
  - adapter_config.json is a LoRA config peft parses, with the expected r,
    lora_alpha and use_dora;
  - the exported adapter_model.safetensors holds exactly the keys (and shapes)
    that peft's own state dict of the loaded PeftModel has, and every value was
    loaded (peft only warns about missing / unexpected keys: here a missing-
    keys warning, or missing / unexpected keys when the file is loaded again
    with set_peft_model_state_dict, fail);
  - peft put an adapter on exactly --expect-modules modules.
Writes --out (safetensors): logits (PeftModel, eval mode) and base_logits (the
plain HF model), float32.

With --grads DIR --probe FILE: DIR is an adapter folder in the same layout whose
tensors are OUR gradients of mean(logits * probe) (probe from FILE), exported
the same way as the weights. peft's gradients (eval mode) must match: lora_B and
the DoRA magnitude directly, lora_A summed over the parts that share our one A
(q/k/v of one attention, gate/up of one MLP; an nn.Linear named "linear"
inside a wrapper, as Gemma 4's vision q_proj.linear, counts as its wrapper).
Max relative error per tensor <= --grad-tol.
"""
import argparse
import json
import sys
import warnings

import torch


def fail(msg):
    print(f"peft_check: {msg}", file=sys.stderr)
    sys.exit(1)


def load_hf(hf_dir):
    import transformers
    with open(f"{hf_dir}/config.json") as f:
        model_type = json.load(f)["model_type"]
    cls = getattr(transformers, {
        "gemma3": "Gemma3ForConditionalGeneration", "gemma3_text": "Gemma3ForCausalLM",
        "gemma4": "Gemma4ForConditionalGeneration", "gemma4_text": "Gemma4ForCausalLM",
    }[model_type])
    model = cls.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def check_grads(model, inputs, grads_dir, probe_file, tol):
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file
    ours = load_file(f"{grads_dir}/adapter_model.safetensors")
    probe = load_file(probe_file)["probe"]
    model.zero_grad()
    (model(**inputs).logits * probe).mean().backward()

    def rel(a, ref, name):
        err = ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
        if not err <= tol:
            fail(f"gradient {name}: max rel error {err:.3e} > {tol}")
        return err

    worst = 0.0
    a_groups = {}  # shared-A group -> (our A grad, sum of peft's A grads)
    for name, m in model.named_modules():
        if not isinstance(m, LoraLayer):
            continue
        prefix = name + "."  # PeftModel module names = exported key prefixes
        worst = max(worst, rel(ours[prefix + "lora_B.weight"],
                               m.lora_B["default"].weight.grad, prefix + "lora_B"))
        if prefix + "lora_magnitude_vector" in ours:
            worst = max(worst, rel(ours[prefix + "lora_magnitude_vector"],
                                   m.lora_magnitude_vector["default"].weight.grad,
                                   prefix + "lora_magnitude_vector"))
        parts = name.split(".")
        if parts[-1] == "linear":  # Gemma4ClippableLinear's inner nn.Linear
            parts = parts[:-1]
        parent, leaf = ".".join(parts[:-1]), parts[-1]
        group = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv",
                 "gate_proj": "gate_up", "up_proj": "gate_up"}.get(leaf, leaf)
        g = a_groups.setdefault(f"{parent}.{group}", [ours[prefix + "lora_A.weight"], 0])
        g[1] = g[1] + m.lora_A["default"].weight.grad
    for group, (our_a, their_sum) in a_groups.items():
        worst = max(worst, rel(our_a, their_sum, group + " lora_A"))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf", required=True, help="HF model folder (save_pretrained)")
    ap.add_argument("--adapter", required=True, help="exported PEFT adapter folder")
    ap.add_argument("--inputs", required=True, help="inputs.safetensors")
    ap.add_argument("--out", required=True, help="where to write the logits")
    ap.add_argument("--r", type=int, required=True)
    ap.add_argument("--alpha", type=float, required=True)
    ap.add_argument("--dora", action="store_true")
    ap.add_argument("--expect-modules", type=int, required=True)
    ap.add_argument("--grads", help="our gradients, exported as an adapter folder")
    ap.add_argument("--probe", help="safetensors file with tensor 'probe' (logits shape)")
    ap.add_argument("--grad-tol", type=float, default=1e-5)
    args = ap.parse_args()

    from peft import LoraConfig, PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(1)
    cfg = LoraConfig.from_pretrained(args.adapter)
    if cfg.peft_type.value != "LORA":
        fail(f"peft_type {cfg.peft_type}")
    if cfg.r != args.r or float(cfg.lora_alpha) != args.alpha or bool(cfg.use_dora) != args.dora:
        fail(f"config r={cfg.r} alpha={cfg.lora_alpha} use_dora={cfg.use_dora}, expected "
             f"r={args.r} alpha={args.alpha} use_dora={args.dora}")

    inputs = load_file(args.inputs)
    base = load_hf(args.hf)
    with torch.no_grad():
        base_logits = base(**inputs).logits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, args.adapter,
                                          is_trainable=bool(args.grads)).eval()
    for w in caught:
        if "adapter keys" in str(w.message) or "unexpected" in str(w.message).lower():
            fail(f"peft warned while loading: {w.message}")
    n_modules = sum(1 for _, m in model.named_modules() if isinstance(m, LoraLayer))
    if n_modules != args.expect_modules:
        fail(f"peft adapted {n_modules} modules, expected {args.expect_modules}")

    ours = {}
    with safe_open(f"{args.adapter}/adapter_model.safetensors", "pt") as f:
        for k in f.keys():
            ours[k] = f.get_tensor(k)
    theirs = get_peft_model_state_dict(model)
    if set(ours) != set(theirs):
        fail(f"keys differ: only in export {sorted(set(ours) - set(theirs))[:5]}, "
             f"only in peft {sorted(set(theirs) - set(ours))[:5]}")
    for k, v in theirs.items():
        if tuple(v.shape) != tuple(ours[k].shape):
            fail(f"{k}: shape {tuple(ours[k].shape)}, peft {tuple(v.shape)}")
        if not torch.equal(v.float(), ours[k].float()):
            fail(f"{k}: value not loaded by peft")

    with torch.no_grad():
        again = set_peft_model_state_dict(model, ours)
    if again.unexpected_keys:
        fail(f"unexpected keys on reload: {again.unexpected_keys[:5]}")
    missing = [k for k in again.missing_keys if "lora_" in k]
    if missing:
        fail(f"missing adapter keys on reload: {missing[:5]}")

    with torch.no_grad():
        logits = model(**inputs).logits
    grad_err = None
    if args.grads:
        grad_err = check_grads(model, inputs, args.grads, args.probe, args.grad_tol)
    save_file({"logits": logits.float().contiguous(),
               "base_logits": base_logits.float().contiguous()}, args.out)
    print(json.dumps({"modules": n_modules, "keys": len(ours), "max_grad_rel_err": grad_err,
                      "target_modules": cfg.target_modules if isinstance(cfg.target_modules, str)
                      else sorted(cfg.target_modules)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
