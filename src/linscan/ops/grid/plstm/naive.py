"""Reference backends of pLSTM: the token loop (1-D) and the cell loop (2-D) of MATH.md 8.2.

Computes in float64 for float64 inputs, float32 otherwise. Slow by design; the
sweep backend is tested against it. The 2-D loop visits the cells in the order
the orientation asks for (no flipping), so the sweep's flips are checked
against an independent traversal.
"""

from __future__ import annotations

import torch

from ...dtypes import compute_dtype, upcast
from ...registry import register


@register("plstm1d", "naive")
def plstm1d_naive(q, k, v, S, T, M, E, *, scale):
    """Token loop; same contract as :func:`linscan.ops.grid.plstm.plstm1d`."""
    dtype = compute_dtype(q)
    B, L, H, K = q.shape
    c_in = q.new_zeros(B, H, K, v.shape[-1], dtype=dtype)           # C_{t-1}
    outs = []
    for q_t, k_t, v_t, s_t, t_t, m_t, e_t in zip(*(x.unbind(1) for x in upcast(q, k, v, S, T, M, E, dtype=dtype))):
        read = torch.einsum("bhkv,bhk->bhv", m_t[..., None, None] * c_in, q_t)
        direct = (e_t * torch.einsum("bhk,bhk->bh", q_t, k_t))[..., None] * v_t
        outs.append(scale * (read + direct))
        c_in = t_t[..., None, None] * c_in + s_t[..., None, None] * torch.einsum("bhk,bhv->bhkv", k_t, v_t)
    return torch.stack(outs, dim=1).to(q.dtype)                      # (B, L, H, V)


@register("plstm2d", "naive")
def plstm2d_naive(q, k, v, S, T, M, E, *, scale, mode="P", orientation=0):
    """Cell loop; same contract as :func:`linscan.ops.grid.plstm.plstm2d`, T taken as given
    (the public op has already normalised it)."""
    dtype = compute_dtype(q)
    B, X, Y, H, K = q.shape
    cells = [_cells(x) for x in upcast(q, k, v, S, T, M, E, dtype=dtype)]   # [i][j] -> (B, H, *)
    di = -1 if orientation & 1 else 1
    dj = -1 if orientation & 2 else 1
    zero = q.new_zeros(B, H, K, v.shape[-1], dtype=dtype)
    R, D, out = {}, {}, {}                                            # by cell (i, j)
    for i in (range(X) if di > 0 else range(X - 1, -1, -1)):
        for j in (range(Y) if dj > 0 else range(Y - 1, -1, -1)):
            r_in, d_in = R.get((i - di, j), zero), D.get((i, j - dj), zero)
            gates = [x[i][j] for x in cells]
            R[i, j], D[i, j], out[i, j] = _cell(*gates, r_in, d_in, scale=scale, mode=mode)
    o = torch.stack([torch.stack([out[i, j] for j in range(Y)], dim=1) for i in range(X)], dim=1)
    return o.to(q.dtype)                                              # (B, X, Y, H, V)


def _cell(q, k, v, S, T, M, E, r_in, d_in, *, scale, mode):
    """One cell: q, k ``[B, H, K]``, v ``[B, H, V]``, S ``[B, H, 2]``, T ``[B, H, 4]``,
    M ``[B, H, 2]``, E ``[B, H]``, incoming states r_in = R_{i-1,j}, d_in = D_{i,j-1}
    ``[B, H, K, V]``; returns (R_ij, D_ij, o_ij)."""
    s_r, s_d = (x[..., None, None] for x in S.unbind(-1))
    t_rl, t_ru, t_dl, t_du = (x[..., None, None] for x in T.unbind(-1))
    m_l, m_u = (x[..., None, None] for x in M.unbind(-1))
    write = torch.einsum("bhk,bhv->bhkv", k, v)
    r_out = t_rl * r_in + t_ru * d_in + s_r * write
    d_out = t_du * d_in + s_d * write
    if mode == "P":                     # the D-mode multitree never reads T^dl
        d_out = d_out + t_dl * r_in
    read = torch.einsum("bhkv,bhk->bhv", m_l * r_in + m_u * d_in, q)
    direct = (E * torch.einsum("bhk,bhk->bh", q, k))[..., None] * v
    return r_out, d_out, scale * (read + direct)


def _cells(x: torch.Tensor) -> list[list[torch.Tensor]]:
    """``[B, X, Y, ...]`` -> nested lists ``[i][j]`` of ``[B, ...]`` (``unbind``: one backward for
    all cells, not a full-size zero gradient per indexed cell)."""
    return [list(row.unbind(1)) for row in x.unbind(1)]
