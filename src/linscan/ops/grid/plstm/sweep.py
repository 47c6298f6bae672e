"""Fast pLSTM backends: scalar-per-head scans as transfer-matrix matmuls (MATH.md 8.2), differentiable.

Every state is a scalar-per-head recurrence on ``[K, V]`` matrices, so each
1-D piece is a chain of C x C transfer matrices per head applied to all ``K * V``
channels by matmuls (signed: tanh transitions may be negative, so no log-space decay).
Autograd runs through the matmuls.

    1-D:     C = scan_t(T, S k v^T);  C_{t-1} by a shift of one token
    P-mode:  row sweep, for j = 0 .. Y-1:
                 R_{.,j} = scan_i(T^rl, T^ru D_{.,j-1} + S^r k v^T)        (one 1-D scan along i)
                 D_{.,j} = T^dl R_{i-1,j} + T^du D_{.,j-1} + S^d k v^T     (element-wise)
             depth O(Y log X)
    D-mode:  T^dl = 0, so D never reads R: two batched scans
                 D = scan_j(T^du, S^d k v^T)                    (all i at once)
                 R = scan_i(T^rl, T^ru D_{i,j-1} + S^r k v^T)   (all j at once)

Orientations flip the X and/or Y axes of the inputs and of the output.
"""

from __future__ import annotations

import torch

from ...dtypes import compute_dtype, upcast
from ...registry import register


@register("plstm1d", "sweep")
def plstm1d_sweep(q, k, v, S, T, M, E, *, scale):
    """Scan backend; same contract as :func:`linscan.ops.grid.plstm.plstm1d`."""
    q_, k_, v_, S, T, M, E = upcast(q, k, v, S, T, M, E, dtype=compute_dtype(q))
    # 1. every token's write S_t k_t v_t^T
    write = S[..., None, None] * torch.einsum("blhk,blhv->blhkv", k_, v_)
    # 2. the states C_t along the sequence, then the ones the marks read, C_{t-1}
    c_in = _shift(_scan(T, write), dim=1)                              # (B, L, H, K, V)
    # 3. o_t = s [M_t C_{t-1}^T q_t + E_t (q_t . k_t) v_t]
    o = _read_out(q_, k_, v_, [(c_in, M)], E, scale)
    return o.to(q.dtype)


@register("plstm2d", "sweep")
def plstm2d_sweep(q, k, v, S, T, M, E, *, scale, mode="P", orientation=0):
    """Row-sweep backend; same contract as :func:`linscan.ops.grid.plstm.plstm2d`, T taken as
    given (the public op has already normalised it)."""
    flips = [axis for bit, axis in ((1, 1), (2, 2)) if orientation & bit]
    inputs = upcast(q, k, v, S, T, M, E, dtype=compute_dtype(q))
    if flips:
        inputs = tuple(x.flip(flips) for x in inputs)
    q_, k_, v_, S, T, M, E = inputs
    # 1. every cell's writes into its outgoing R and D states, (S^r k) v^T and (S^d k) v^T: the gate
    #    scales k, so no grid-sized k v^T is formed and then scaled twice
    w_r, w_d = (torch.einsum("bxyhk,bxyhv->bxyhkv", k_ * S[..., e, None], v_) for e in (0, 1))
    # 2. the incoming states of every cell, R_{i-1,j} and D_{i,j-1}
    r_in, d_in = (_p_sweep if mode == "P" else _d_sweep)(T, w_r, w_d)  # (B, X, Y, H, K, V) each
    # 3. o_ij = s [M^l R_{i-1,j}^T q_ij + M^u D_{i,j-1}^T q_ij + E_ij (q_ij . k_ij) v_ij]
    o = _read_out(q_, k_, v_, [(r_in, M[..., 0]), (d_in, M[..., 1])], E, scale)
    return (o.flip(flips) if flips else o).to(q.dtype)


def _p_sweep(T, w_r, w_d):
    """P-mode incoming states by the row sweep; T ``[B, X, Y, H, 4]``, w_r, w_d ``[B, X, Y, H, K, V]``."""
    # columns split once: indexing column j inside the loop would cost a grid-sized zero
    # tensor per index in the backward
    t_rl, t_ru, t_dl, t_du = (gate.unbind(2) for gate in T.unbind(-1))  # Y x (B, X, H) each
    w_r, w_d = w_r.unbind(2), w_d.unbind(2)                               # Y x (B, X, H, K, V)
    d_prev = torch.zeros_like(w_d[0])                                  # D_{.,j-1}: (B, X, H, K, V)
    r_ins, d_ins = [], []
    for j in range(len(w_r)):
        # R_{.,j}: a scan along i whose input also carries the D state arriving from column j-1
        r = _scan(t_rl[j], t_ru[j][..., None, None] * d_prev + w_r[j])
        r_in = _shift(r, dim=1)                                        # R_{i-1,j}
        r_ins.append(r_in)
        d_ins.append(d_prev)
        d_prev = t_dl[j][..., None, None] * r_in + t_du[j][..., None, None] * d_prev + w_d[j]
    return torch.stack(r_ins, dim=2), torch.stack(d_ins, dim=2)


def _d_sweep(T, w_r, w_d):
    """D-mode incoming states by two batched scans (T^dl is not read); shapes as in ``_p_sweep``."""
    t_rl, t_ru, _, t_du = T.unbind(-1)                                 # (B, X, Y, H) each
    # 1. D along j, every i at once: the batch is (B X)
    d = _scan(t_du.flatten(0, 1), w_d.flatten(0, 1)).view(w_d.shape)
    d_in = _shift(d, dim=2)                                            # D_{i,j-1}
    # 2. R along i, every j at once: the batch is (B Y)
    b = (t_ru[..., None, None] * d_in + w_r).transpose(1, 2)           # (B, Y, X, H, K, V)
    r = _scan(t_rl.transpose(1, 2).flatten(0, 1), b.flatten(0, 1)).view(b.shape).transpose(1, 2)
    return _shift(r, dim=1), d_in                                      # R_{i-1,j}, D_{i,j-1}


CHUNK = 32                  # positions per transfer matrix: its cost grows as CHUNK per position


def _scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_n = a_n h_{n-1} + b_n along axis 1: a ``[N, L, H]`` (one scalar per head), b ``[N, L, H, K, V]``.

    The transition is one scalar per head, so a chunk of C positions is one C x C matrix per
    head, ``h_t = sum_{s<=t} P_ts b_s + (a_1 ... a_t) h_0`` with ``P_ts = a_{s+1} ... a_t``, applied
    to every (K, V) channel by a batched matmul (a per-channel linear_scan would repeat the same
    products K V times); chunks are chained by their last state. P comes from a cumulative
    product, not from log space: transitions may be negative or zero.
    """
    h, outs = None, []
    for a_c, b_c in zip(a.split(CHUNK, dim=1), b.split(CHUNK, dim=1)):  # split: one cat in the backward
        N, C, H = a_c.shape
        steps = torch.arange(C, device=a.device)
        later = steps[:, None] > steps[None, :]                        # (t, s): t > s
        one = torch.ones((), dtype=a.dtype, device=a.device)
        P = torch.where(later, a_c.transpose(1, 2)[..., :, None], one).cumprod(dim=2).tril()  # (N, H, C, C)
        h_c = torch.einsum("nhts,nshc->nthc", P, b_c.reshape(N, C, H, -1)).view(b_c.shape)
        if h is not None:                                              # the state entering the chunk
            h_c = h_c + a_c.cumprod(dim=1)[..., None, None] * h[:, None]
        outs.append(h_c)
        h = h_c[:, -1]
    return torch.cat(outs, dim=1)


def _shift(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The state entering each position: x moved one step along ``dim``, zeros first."""
    first = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat((first, x.narrow(dim, 0, x.shape[dim] - 1)), dim=dim)


def _read_out(q, k, v, incoming, E, scale):
    """s [sum_(C, m) m C^T q + E (q . k) v]; q, k ``[..., H, K]``, v ``[..., H, V]``, incoming: pairs
    (state ``[..., H, K, V]``, mark ``[..., H]``). Each state is read by q before the mark scales it:
    one pass over the big state tensors instead of forming ``sum m C`` first."""
    read = sum(m[..., None] * torch.einsum("...hkv,...hk->...hv", C, q) for C, m in incoming)
    direct = (E * torch.einsum("...hk,...hk->...h", q, k))[..., None] * v
    return scale * (read + direct)
