"""torch.optim.AdamW on the parameters and gradients of a safetensors file.

  adamw_ref.py IN OUT
IN holds "param/<name>" (initial values), "grad<k>/<name>" (gradient of step
k, k = 0..steps-1), and the scalars "lr" [steps], "hyper" [beta1, beta2, eps,
weight_decay] (float64). Weight decay applies to parameters with two or more
dimensions (a second param group with weight_decay 0 holds the rest), as the
trainer does. OUT gets "param/<name>" after each step k as "step<k>/<name>".
"""
import sys

import torch
from safetensors.torch import load_file, save_file


def main():
    data = load_file(sys.argv[1])
    lrs = data["lr"].tolist()
    beta1, beta2, eps, wd = data["hyper"].tolist()
    names = sorted(k[len("param/"):] for k in data if k.startswith("param/"))
    params = {n: torch.nn.Parameter(data["param/" + n].clone()) for n in names}
    decay = [params[n] for n in names if params[n].dim() >= 2]
    no_decay = [params[n] for n in names if params[n].dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lrs[0], betas=(beta1, beta2), eps=eps, foreach=False)
    out = {}
    for k, lr in enumerate(lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        for n in names:
            params[n].grad = data[f"grad{k}/{n}"].clone()
        opt.step()
        for n in names:
            out[f"step{k}/{n}"] = params[n].detach().clone()
    save_file(out, sys.argv[2])


if __name__ == "__main__":
    main()
