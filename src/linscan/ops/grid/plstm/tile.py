"""Tiled (chunkwise 2-D) pLSTM backend: K x V states only on tile borders (MATH.md 8.2), differentiable.

The row sweep materialises every cell's two K x V edge states, so it is bound by
memory traffic. Here the grid is cut into c x c tiles (c = TILE) and, as in the
chunkwise form of the 1-D families, only the states that cross tile borders are
formed; inside a tile everything is attention-like. Every gate is a scalar per head,
so the states a cell reads are scalar-weighted sums of its tile's writes
``k v^T`` and of the 2c states entering the tile (c R-states across its top
border, one per column; c D-states across its left border, one per row):

    1. path weights, per tile: the scalar recurrence of the cell loop run on weight
       vectors over the n + 2c sources (n = c^2 cells, then the 2c entering states):
           A[p, :]   = M^l_p r_in[p] + M^u_p d_in[p]          what cell p reads
           W[e, :]   = weights of the 2c states leaving the tile (R: bottom row, D: right column)
    2. inside:   o_p  = sum_{q in tile} A[p, q] (q_p . k_q) v_q                 (masked attention)
    3. leaving:  U_e  = sum_{q in tile} W[e, q] k_q v_q^T                        (2c states per tile)
    4. across tiles, in anti-diagonal order (tiles on one anti-diagonal are independent):
           out(I, J) = U(I, J) + W[:, n:](I, J) in(I, J),
           in(I, J)  = (R part of out(I-1, J), D part of out(I, J-1)),  zero on the grid border
    5. entering: o_p += sum_e A[p, n + e] q_p^T in_e;  then o = s (o + E (q . k) v)

Per cell that is about c^2 (K + V) + 4 c K V multiply-adds and 4 K V / c floats of
state, against the sweep's several K x V state passes per cell. Transitions may be
negative or zero (no log space). Orientations flip the X and/or Y axes, as the sweep.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...dtypes import compute_dtype, upcast
from ...registry import register

TILE = 4                    # cells per tile side: inside work grows as TILE^2, border work as TILE


@register("plstm2d", "tile")
def plstm2d_tile(q, k, v, S, T, M, E, *, scale, mode="P", orientation=0):
    """Tiled backend; same contract as :func:`linscan.ops.grid.plstm.plstm2d`, T taken as given
    (the public op has already normalised it)."""
    flips = [axis for bit, axis in ((1, 1), (2, 2)) if orientation & bit]
    if mode == "D":                     # the multitree never reads T^dl: no gradient flows to it
        T = T * T.new_tensor([1.0, 1.0, 0.0, 1.0])
    inputs = upcast(q, k, v, S, T, M, E, dtype=compute_dtype(q))
    if flips:
        inputs = tuple(x.flip(flips) for x in inputs)
    B, X, Y, H, _ = q.shape
    grid = _Tiling(X, Y, _tile_side(X, Y), q.device)
    c, n = grid.c, grid.c * grid.c
    # (tiles B H, c c, F), tiles in anti-diagonal order: padded cells have zero gates and inputs
    q_, k_, v_, S, T, M, E = (grid.split(x) for x in inputs)
    # 1. path weights inside every tile
    A, W = _path_weights(S, T, M, c)                                   # (N, n, n+2c), (N, 2c, n+2c)
    # 2. o_p = sum_q A[p, q] (q_p . k_q) v_q
    o = (A[..., :n] * (q_ @ k_.transpose(1, 2))) @ v_
    # 3. the states leaving each tile from its own writes, U_e = sum_q W[e, q] k_q v_q^T
    #    (e: R across the bottom border by column, then D across the right border by row)
    k_t = k_.transpose(1, 2).contiguous()                              # (N, K, n)
    U = (W[..., :n].contiguous()[..., None, :] * k_t[:, None]).flatten(1, 2) @ v_  # (N, 2c K, V)
    # 4-5. the states entering each tile, R from above and D from the left, and what its cells
    #      read of them, o_p += sum_e A[p, n+e] q_p^T in_e, with reading weights (N, n, c K) each
    reads = [(A[..., n + e * c:n + (e + 1) * c, None] * q_[:, :, None]).flatten(2) for e in (0, 1)]
    o = o + _across_tiles(U, W[..., n:], reads, grid)
    o = scale * (o + (E[..., 0] * (q_ * k_).sum(-1))[..., None] * v_)
    o = grid.merge(o, B, H)
    return (o.flip(flips) if flips else o).to(q.dtype)


def _tile_side(X: int, Y: int) -> int:
    """At most TILE, as even as the grid allows: 12 -> 6 (two tiles, no padding), not 8 + 4."""
    return max(-(-n // -(-n // TILE)) for n in (X, Y))


class _Tiling:
    """c x c tiles of an X x Y grid, ordered by anti-diagonal s = I + J (then I), so the tiles the
    step-4 recurrence updates together are one contiguous block of the batch."""

    def __init__(self, X: int, Y: int, c: int, device):
        self.X, self.Y, self.c = X, Y, c
        self.nI, self.nJ = -(-X // c), -(-Y // c)
        tiles = sorted(((i + j, i, j) for i in range(self.nI) for j in range(self.nJ)))
        self.diagonals = [[(i, j) for s_, i, j in tiles if s_ == s] for s in range(self.nI + self.nJ - 1)]
        self.order = torch.tensor([i * self.nJ + j for _, i, j in tiles], device=device)
        self.inverse = torch.argsort(self.order)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, X, Y, H, *F]`` (a gate without F gets F = 1) -> ``[tiles B H, c c, F]``, zero padded."""
        if x.dim() == 4:
            x = x[..., None]
        B, X, Y, H, Fd = x.shape
        c, nI, nJ = self.c, self.nI, self.nJ
        if (nI * c, nJ * c) != (X, Y):
            x = F.pad(x, (0, 0, 0, 0, 0, nJ * c - Y, 0, nI * c - X))
        x = x.view(B, nI, c, nJ, c, H, Fd).permute(1, 3, 0, 5, 2, 4, 6)  # (nI, nJ, B, H, c, c, F)
        x = x.reshape(nI * nJ, B * H, c * c, Fd).index_select(0, self.order)
        return x.view(-1, c * c, Fd)

    def merge(self, o: torch.Tensor, B: int, H: int) -> torch.Tensor:
        """``[tiles B H, c c, V]`` -> ``[B, X, Y, H, V]`` (padding cropped)."""
        c, nI, nJ = self.c, self.nI, self.nJ
        o = o.view(nI * nJ, B * H * c * c, -1).index_select(0, self.inverse)
        o = o.view(nI, nJ, B, H, c, c, -1).permute(2, 0, 4, 1, 5, 3, 6)  # (B, nI, c, nJ, c, H, V)
        return o.reshape(B, nI * c, nJ * c, H, -1)[:, :self.X, :self.Y]


def _path_weights(S, T, M, c: int):
    """Scalar path weights of one tile: S ``[N, n, 2]``, T ``[N, n, 4]``, M ``[N, n, 2]`` ->
    A ``[N, n, n + 2c]`` (what each cell reads) and W ``[N, 2c, n + 2c]`` (the leaving states:
    R across the bottom border by column, then D across the right border by row).

    Sources ("slots"): the n cells (row-major), then the R-states entering the top of columns
    0..c-1, then the D-states entering the left of rows 0..c-1; each cell writes into its own
    slot. The cell loop's recurrence on weight vectors, one tile row at a time: along a row,
    D is a 1-D scan with transitions T^du (a c x c carry matrix), R then follows element-wise.
    """
    N, n, _ = S.shape
    eye = torch.eye(n + 2 * c, dtype=S.dtype, device=S.device)
    S, T = S.view(N, c, c, 2), T.view(N, c, c, 4)
    r_in = eye[n:n + c].expand(N, c, -1)                               # row 0: R from above
    r_ins, d_ins, d_right = [], [], []
    for a in range(c):
        t_rl, t_ru, t_dl, t_du = (x[..., None] for x in T[:, a].unbind(-1))  # (N, c, 1) each
        s_r, s_d = (x[..., None] for x in S[:, a].unbind(-1))
        own = eye[a * c:(a + 1) * c]                                   # (c, slots): cell (a, b)
        # 1. D leaving (a, b) is T^du D_{a,b-1} + g_b; g_b: what R and the write put in
        g = t_dl * r_in + s_d * own
        carry, from_left = _carry(t_du[..., 0])                        # (N, c, c), (N, c)
        d_in = carry @ g + from_left[..., None] * eye[n + c + a]       # D_{a,b-1} for every b
        # 2. R leaving (a, b): element-wise once D_{a,b-1} is known
        r_ins.append(r_in)
        d_ins.append(d_in)
        d_right.append(t_du[:, -1] * d_in[:, -1] + g[:, -1])
        r_in = t_rl * r_in + t_ru * d_in + s_r * own
    A = M[..., :1] * torch.cat(r_ins, dim=1) + M[..., 1:] * torch.cat(d_ins, dim=1)
    return A, torch.cat((r_in, torch.stack(d_right, dim=1)), dim=1)


def _carry(a: torch.Tensor):
    """For h_b = a_b h_{b-1} + g_b along a row, a ``[N, c]``: the weights of every g_{b'} (b' < b)
    and of the state entering the row in h_{b-1}, i.e. ``prod_{b'<u<b} a_u`` ``[N, c, c]`` (zero
    for b' >= b) and ``prod_{u<b} a_u`` ``[N, c]``. Cumulative products: a may be negative or 0."""
    c = a.shape[-1]
    steps = torch.arange(c, device=a.device)
    before = torch.cat((torch.ones_like(a[:, :1]), a[:, :-1]), dim=1)  # a_{b-1} at b, 1 at b = 0
    factor = torch.where(steps[:, None] - 1 > steps[None, :], before[..., None], 1.0)  # (N, b, b')
    later = steps[:, None] > steps[None, :]
    return factor.cumprod(dim=1) * later, before.cumprod(dim=1)


def _across_tiles(U, W, reads, grid: _Tiling) -> torch.Tensor:
    """Steps 4-5: what every cell reads of the states entering its tile, ``[N, n, V]``.

    U ``[N, 2c K, V]``: the states a tile's own writes leave (R by column, then D by row);
    W ``[N, 2c, 2c]``: the weights of the entering states (R from above by column, then D from
    the left by row) in the leaving ones; reads: the reading weights of the entering R- and
    D-states, ``[N, n, c K]`` each. N runs over (tiles in anti-diagonal order, B, H).

    Tile (I, J) on anti-diagonal s reads R from (I-1, J) and D from (I, J-1), both on s-1 at
    positions I-1 and I: shifted runs of the previous diagonal, zero on the grid border. The
    entering states are read on the spot, so they are never gathered into one tensor.
    """
    N, c2K, V = U.shape
    c = W.shape[1] // 2
    bh = N // (grid.nI * grid.nJ)                                      # B H
    # one block per anti-diagonal by split, not slicing: a slice's backward is a full-size zero
    sizes = [len(diagonal) * bh for diagonal in grid.diagonals]
    U = U.view(N, 2 * c, -1).split(sizes)                              # (tiles B H, 2c, K V)
    W_above, W_left = (w.contiguous().split(sizes) for w in (W[..., :c], W[..., c:]))
    read_above, read_left = (r.split(sizes) for r in reads)
    zero = U[0].new_zeros(bh, c, U[0].shape[-1])
    outs, prev = [], []
    for s, diagonal in enumerate(grid.diagonals):
        rows = [i for i, _ in diagonal]
        if prev:
            above = _pick(out[:, :c], [prev.index(i - 1) if i - 1 in prev else None for i in rows], zero)
            left = _pick(out[:, c:], [prev.index(i) if i in prev else None for i in rows], zero)
        else:
            above = left = zero.repeat(len(rows), 1, 1)
        out = torch.baddbmm(U[s], W_above[s], above).baddbmm_(W_left[s], left)  # (tiles B H, 2c, K V)
        outs.append(torch.baddbmm(read_above[s] @ above.view(-1, c2K // 2, V), read_left[s],
                                  left.view(-1, c2K // 2, V)))
        prev = rows
    return torch.cat(outs)


def _pick(x: torch.Tensor, at: list, zero: torch.Tensor) -> torch.Tensor:
    """Tiles ``at`` of x ``[tiles B H, ...]`` (consecutive indices; None: a zero tile, at either
    end) as ``[len(at) B H, ...]``; zero ``[B H, ...]``."""
    bh = zero.shape[0]
    inside = [i for i in at if i is not None]
    head = at.index(inside[0]) if inside else len(at)
    middle = [x.narrow(0, inside[0] * bh, len(inside) * bh)] if inside else []
    parts = [zero] * head + middle + [zero] * (len(at) - head - len(inside))
    return torch.cat(parts) if len(parts) > 1 else parts[0].contiguous()
