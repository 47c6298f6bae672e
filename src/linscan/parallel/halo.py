"""The halo of a short convolution under sequence parallelism (MATH.md section 7).

A causal convolution of width W at rank r's first tokens reads the last W - 1 inputs of
rank r - 1 (zeros on rank 0). :func:`previous_tail` hands them over with one small
all-gather, and in backward hands their gradient back to rank r - 1 the same way.
"""

from __future__ import annotations

import torch

from . import comm


def previous_tail(tail: torch.Tensor, ranks: comm.Ranks) -> torch.Tensor:
    """``tail [B, n, D]``: this rank's last n inputs -> the previous rank's (zeros on rank 0)."""
    return _PreviousTail.apply(tail, ranks)


class _PreviousTail(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tail, ranks):
        ctx.ranks = ranks
        tails = comm.all_gather(tail, ranks, kind="halo")         # (W, B, n, D)
        return tails[ranks.rank - 1].clone() if ranks.rank > 0 else torch.zeros_like(tail)

    @staticmethod
    def backward(ctx, d_previous):
        ranks = ctx.ranks
        grads = comm.all_gather(d_previous.contiguous(), ranks, kind="halo")   # rank j's grad of rank j-1's tail
        return (grads[ranks.rank + 1].clone() if ranks.rank + 1 < ranks.world else torch.zeros_like(d_previous)), None
