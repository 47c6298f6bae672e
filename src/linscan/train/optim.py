"""AdamW with decoupled weight decay on matrices only, and warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

# Parameters that gate or decay the recurrence: decaying them toward 0 would change the
# memory horizon, not regularise it. Mixers may also set `param._no_weight_decay = True`.
NO_DECAY_NAMES = ("A_log", "dt_bias", "bias", "norm", "gate_bias", "slopes")


def no_decay(name: str, param: nn.Parameter) -> bool:
    return param.dim() < 2 or getattr(param, "_no_weight_decay", False) or any(s in name for s in NO_DECAY_NAMES)


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with two groups: decayed matrices and everything else (norms, biases, gates) undecayed."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if no_decay(name, p) else decay).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay), dict(params=keep, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, cosine to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer, *, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup=warmup, total=total))
