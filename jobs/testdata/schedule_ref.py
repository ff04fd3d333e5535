"""Learning rates transformers' schedulers give, step by step, as JSON.

Prints {"cosine": [...], "cosine_min": [...], "linear": [...], "constant": [...]}
for lr 1e-3, warmup 3, 20 steps: entry s is the rate optimizer step s uses.
"""
import json

import torch
from transformers import optimization as o

LR, WARMUP, TOTAL = 1e-3, 3, 20


def rates(make):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=LR)
    sched = make(opt)
    out = []
    for _ in range(TOTAL + 2):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


print(json.dumps({
    "cosine": rates(lambda opt: o.get_cosine_schedule_with_warmup(opt, WARMUP, TOTAL)),
    "cosine_min": rates(lambda opt: o.get_cosine_with_min_lr_schedule_with_warmup(
        opt, WARMUP, TOTAL, min_lr_rate=0.1)),
    "linear": rates(lambda opt: o.get_linear_schedule_with_warmup(opt, WARMUP, TOTAL)),
    "constant": rates(lambda opt: o.get_constant_schedule_with_warmup(opt, WARMUP)),
}))
