"""Reference backend of the 2-D SSM: the cell loop of MATH.md section 8.4.

Visits the cells variate by variate, each variate in time order, and applies the
recurrence of :func:`linscan.ops.grid.ssm2d.ssm2d` literally. Computes in float64
for float64 inputs, float32 otherwise. Slow by design; ``sweep`` is tested against it.
"""

from __future__ import annotations

import torch

from ...dtypes import compute_dtype, upcast
from ...registry import register


def skip(x: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor | float:
    """``D x`` for x ``[B, X, Y, H, P]`` and d ``[H]`` or ``[H, P]`` (0 without d)."""
    if d is None:
        return 0.0
    return x * (d[:, None] if d.dim() == 1 else d)


def variate_order(Y: int, reverse_variates: bool) -> tuple[list[int], int]:
    """The variates in scan order and the step to a cell's predecessor (-1, or +1 when reversed)."""
    return (list(range(Y - 1, -1, -1)), +1) if reverse_variates else (list(range(Y)), -1)


@register("ssm2d", "naive")
def ssm2d_naive(x, a1, a2, a3, a4, b1, b2, c1, c2, d=None, *, form="cell", reverse_variates=False):
    """Cell loop; same contract as :func:`linscan.ops.grid.ssm2d.ssm2d` (coefficients ``[B, X, Y, H, N]``)."""
    dtype = compute_dtype(x)
    xc, dc = upcast(x, d, dtype=dtype)
    coefficients = upcast(a1, a2, a3, a4, b1, b2, c1, c2, dtype=dtype)
    B, X, Y, H, P = x.shape
    zero = xc.new_zeros(B, H, P, a1.shape[-1])                     # (B, H, P, N)
    h1, h2, y = {}, {}, {}                                         # (v, t) -> (B, H, P, N) | (B, H, P)
    order, back = variate_order(Y, reverse_variates)
    for v in order:
        for t in range(X):
            # this cell's coefficients (B, H, 1, N), broadcast over the channels P
            A1, A2, A3, A4, B1, B2, C1, C2 = (c[:, t, v, :, None] for c in coefficients)
            u = xc[:, t, v, :, :, None]                            # (B, H, P, 1)
            h1_in = h1.get((v, t - 1), zero)                       # from the cell before in time
            h2_in = h2.get((v + back, t), zero)                    # from the cell before in variates
            if form == "cell":
                h1[v, t] = A1 * h1_in + A2 * h2.get((v, t - 1), zero) + B1 * u
                h2[v, t] = A3 * h1.get((v + back, t), zero) + A4 * h2_in + B2 * u
                read1, read2 = h1[v, t], h2[v, t]
            else:
                h1[v, t] = A1 * h1_in + A2 * h2_in + B1 * u
                h2[v, t] = A3 * h1_in + A4 * h2_in + B2 * u
                read1, read2 = h1_in, h2_in
            y[v, t] = (C1 * read1 + C2 * read2).sum(-1)            # (B, H, P)
    rows = [torch.stack([y[v, t] for v in range(Y)], dim=1) for t in range(X)]
    out = torch.stack(rows, dim=1) + skip(xc, dc)                  # (B, X, Y, H, P)
    return out.to(x.dtype)
