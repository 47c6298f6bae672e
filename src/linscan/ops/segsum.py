"""Decay between the tokens of a chunk, from sums of log-decays (never differences).

Inside a chunk the decay from token s to token t >= s is exp(g_{s+1} + ... + g_t).
Written as exp(b_t - b_s) with b = cumsum(g) it cancels catastrophically: after one
strong decay (g = -1e4, say) b is about -1e4, its float32 spacing is 1e-3, and the
ordinary decays after it (-0.01, say) are rounded away in b before the difference
is taken; after g = -inf it is exp(-inf - (-inf)) = NaN. A sum of terms of one sign
(g <= 0) never cancels, so every exponent here is a sum over the tokens it spans
(mamba's ssd_minimal ``segsum``), with a relative error of a few ulps whatever the gates:

    prefix    b_t = g_1 + ... + g_t                    cumsum
    segment   b_t - b_s = g_{s+1} + ... + g_t          segment_decay (all pairs s <= t)
    suffix    b_C - b_s = g_{s+1} + ... + g_C          suffix_sums

Gradients work on the cumulative sums (the formulas of the b_t - b_s form, fed the
exactly computed decays): dL/dg_r = sum_{t >= r} dL/db_t, see :func:`cumsum_grad`.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def decay_matrix(g: torch.Tensor) -> torch.Tensor:
    """``g (..., C) -> (..., C, C)``: ``[t, s] = exp(g_{s+1} + ... + g_t)`` for s <= t (1 on the
    diagonal), 0 for s > t. Not differentiable (see :func:`segment_decay`).

    The sums run down the columns of ``[r, s] = g_r`` (r > s) else 0: a selection and a cumulative
    sum (no products with triangular masks, so -inf and NaN stay causal).
    """
    C = g.shape[-1]
    below = torch.ones(C, C, dtype=torch.bool, device=g.device).tril(-1)
    # [r, s] = g_r for r > s; g made contiguous first, since where() lays its result out like its
    # inputs, and a transposed layout makes every pass below several times slower
    sums = torch.where(below, g.contiguous()[..., :, None], 0.0)
    return sums.cumsum_(dim=-2).exp_().tril_()


def cumsum_grad(d_b: torch.Tensor) -> torch.Tensor:
    """dL/dg from dL/db for b = cumsum(g) along the last axis: the sums over t >= r."""
    return d_b.flip(-1).cumsum(-1).flip(-1)


def pair_grad(w: torch.Tensor) -> torch.Tensor:
    """dL/db (..., C) from w = dL/d(b_t - b_s) (..., C, C), lower triangular; w's diagonal is cleared.

    The diagonal holds the pairs s = t, whose exponent is 0 whatever b: they carry no gradient,
    but they are the largest entries, and left in they cancel in the row and column sums below
    (costing the gradient of a strong decay its float32 digits).
    """
    w.diagonal(dim1=-2, dim2=-1).zero_()
    return w.sum(-1) - w.sum(-2)


class SegmentDecay(torch.autograd.Function):
    """:func:`decay_matrix` with its gradient. With D the matrix and W = dL/dD * D (the gradient
    of its exponents b_t - b_s), dL/db_t = sum_s W_ts - sum_s W_st, then :func:`cumsum_grad`."""

    @staticmethod
    def forward(ctx, g):
        decay = decay_matrix(g)
        ctx.save_for_backward(decay)
        return decay

    @staticmethod
    @once_differentiable
    def backward(ctx, d_decay):
        decay, = ctx.saved_tensors
        w = d_decay * decay                                        # dL/d(b_t - b_s)
        return cumsum_grad(pair_grad(w))


def segment_decay(g: torch.Tensor) -> torch.Tensor:
    """Differentiable :func:`decay_matrix`: ``g (..., C) -> (..., C, C)``."""
    return SegmentDecay.apply(g)


def suffix_sums(g: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``g_{s+1} + ... + g_C`` for every s along ``dim`` (0 for the last): the log-decay from each
    token to the end of its chunk, as a sum (``sum(g) - cumsum(g)`` would cancel)."""
    rest = g.narrow(dim, 1, g.shape[dim] - 1).flip(dim).cumsum(dim).flip(dim)
    return torch.cat([rest, torch.zeros_like(g.narrow(dim, 0, 1))], dim=dim)
