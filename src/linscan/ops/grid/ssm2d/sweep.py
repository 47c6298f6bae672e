"""Row-sweep backend of the 2-D SSM (MATH.md section 8.4, "Row sweep").

The variates are visited in order (reversed for ``reverse_variates``); within a row
the time recurrence of h1 is a 1-D diagonal linear scan (``linscan.ops.linear_scan``,
chunked and differentiable), the variate recurrence of h2 is elementwise:

    cell form, row v (prev = row v - 1, zero before the first):
        1. h2_{v,t} = Ab3 h1_{prev,t} + Ab4 h2_{prev,t} + Bb2 x_{v,t}              (elementwise)
        2. h1_{v,.} = scan_t(Ab1, Ab2 h2_{v,t-1} + Bb1 x_{v,t})                    (1-D scan)
        3. y_{v,t}  = C1 h1_{v,t} + C2 h2_{v,t}
    Roesser form, row v:
        1. h1_{v,.} = scan_t(Ab1, Ab2 h2_{prev,t} + Bb1 x_{v,t})                   (1-D scan)
        2. h2_{v,t} = Ab3 h1_{v,t-1} + Ab4 h2_{prev,t} + Bb2 x_{v,t}               (elementwise)
        3. y_{v,t}  = C1 h1_{v,t-1} + C2 h2_{prev,t}

Depth O(Y log X) with the chunked scan; the scan runs over B x (H P N) channels.
Everything is autograd through torch ops and ``linear_scan``'s own backward.
"""

from __future__ import annotations

import torch

from ...dtypes import compute_dtype, upcast
from ...registry import register
from ...scan import linear_scan
from .naive import skip, variate_order


def shift_time(h: torch.Tensor) -> torch.Tensor:
    """``h[:, t-1]`` at t (zero at t = 0): ``[B, X, ...]`` -> same shape."""
    return torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)


def scan_time(a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + u_t`` along X for a ``[B, X, H, 1, N]``, u ``[B, X, H, P, N]`` -> h like u."""
    B, X, H, P, N = u.shape
    a = a.expand(B, X, H, P, N).reshape(B, X, H * P * N)          # (B, X, D), D = H P N
    return linear_scan(a, u.reshape(B, X, H * P * N)).view(B, X, H, P, N)


@register("ssm2d", "sweep")
def ssm2d_sweep(x, a1, a2, a3, a4, b1, b2, c1, c2, d=None, *, form="cell", reverse_variates=False):
    """Row sweep; same contract as :func:`linscan.ops.grid.ssm2d.ssm2d` (coefficients ``[B, X, Y, H, N]``)."""
    dtype = compute_dtype(x)
    xc, dc = upcast(x, d, dtype=dtype)
    # (B, X, Y, H, 1, N): the transitions broadcast over the channels P
    A1, A2, A3, A4, B1, B2 = (c.to(dtype)[..., None, :] for c in (a1, a2, a3, a4, b1, b2))
    C1, C2 = c1.to(dtype), c2.to(dtype)                            # (B, X, Y, H, N)
    u = xc[..., None]                                              # (B, X, Y, H, P, 1)
    B, X, Y, H, P = x.shape
    h1_prev = h2_prev = xc.new_zeros(B, X, H, P, a1.shape[-1])     # (B, X, H, P, N): the row before
    rows = {}
    order, _ = variate_order(Y, reverse_variates)
    for v in order:
        if form == "cell":
            h2 = A3[:, :, v] * h1_prev + A4[:, :, v] * h2_prev + B2[:, :, v] * u[:, :, v]
            h1 = scan_time(A1[:, :, v], A2[:, :, v] * shift_time(h2) + B1[:, :, v] * u[:, :, v])
            read1, read2 = h1, h2
        else:
            h1 = scan_time(A1[:, :, v], A2[:, :, v] * h2_prev + B1[:, :, v] * u[:, :, v])
            read1, read2 = shift_time(h1), h2_prev
            h2 = A3[:, :, v] * read1 + A4[:, :, v] * h2_prev + B2[:, :, v] * u[:, :, v]
        rows[v] = (torch.einsum("bxhpn,bxhn->bxhp", read1, C1[:, :, v])
                   + torch.einsum("bxhpn,bxhn->bxhp", read2, C2[:, :, v]))  # (B, X, H, P)
        h1_prev, h2_prev = h1, h2
    y = torch.stack([rows[v] for v in range(Y)], dim=2) + skip(xc, dc)  # (B, X, Y, H, P)
    return y.to(x.dtype)
