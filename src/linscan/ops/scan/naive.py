"""Reference backend of the linear scan: the plain loop of MATH.md section 4.

Computes in float64 for float64 inputs, float32 otherwise; autograd goes
through the loop. Slow by design; every other backend is tested against it.
"""

from __future__ import annotations

import torch

from ..dtypes import compute_dtype
from ..registry import register
from .structure import apply, canonical


@register("scan", "naive")
def scan_naive(a, b, h0=None, *, reverse=False, chunk_size=None):
    """Token loop; same contract as :func:`linscan.ops.linear_scan` (``chunk_size`` is ignored)."""
    a_c, b_c, h = canonical(a, b, h0, compute_dtype(b))
    diag = a_c.dim() == b_c.dim()
    if h is None:
        h = b_c.new_zeros(b_c[:, 0].shape)
    # unbind, not b[:, t]: the backward of indexing allocates a full-size zero tensor per step
    steps = list(zip(a_c.unbind(1), b_c.unbind(1)))
    outs = []
    for a_t, b_t in (reversed(steps) if reverse else steps):
        h = apply(a_t, h, diag) + b_t
        outs.append(h)
    if reverse:
        outs.reverse()
    return torch.stack(outs, dim=1).flatten(2).to(b.dtype)    # (B, T, D)
