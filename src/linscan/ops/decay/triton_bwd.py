"""Backward kernels of the decay family's Triton backend (MATH.md section 1, run in reverse).

With dS_n the gradient of the state *leaving* chunk n (from the reverse state pass)
and S_n the state entering it, on one chunk (q~ = scale * q):

    dA   = (dO V^T, s <= t)                                   gradient of the scores
    dV   = A^T dO + (K e^{b_C - b}) dS_n
    dq~  = (dA * e^{b_t - b_s}) K + e^{b} (dO S_n^T)           (diagonal gates: 16-token sub-blocks)
    dK   = (dA * e^{b_t - b_s})^T q~ + e^{b_C - b} (V dS_n^T)
    db_t = q~_t dq~_t - k_t dk_t,  plus at the chunk's last token
           sum_v S_{n+1} dS_n = e^{b_C} sum_v S_n dS_n + sum_s k_s dk^{state}_s
    dg   = reverse cumulative sum of db inside the chunk

Extra work against the old difference form, per (chunk, K tile): a [C, BK] reverse cumulative
sum for each e^{b_C - b}; the scalar gate's [C, C] segment sums; for diagonal gates the
[S, S, BK] segment sums of every sub-block and two [C, BK] cumulative sums per sub-block
(the reference-point decays): O(C^2 BK) adds at most, against the O(C^2 K) products.

db takes dq~, dk without the pairs s = t (exponent 0 whatever b: no gradient, but the
largest terms, which would cancel between q~ dq~ and k dk and cost dg float32 digits;
segsum.pair_grad); the diagonal dA_tt is added to dq~, dk afterwards.

As in the forward, every decay e^{b_t - b_s}, e^{b_C - b_s} is computed from a sum of the log
gates g over the tokens it spans (ops/segsum.py), never from a difference of cumulative sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..shared.triton import (ChunkLayout, chunk_bounds, exp_nonpositive, gate_suffix, load_gate, load_rows,
                             segment_sums, tile)
from .triton_fwd import NUM_WARPS, SUB_BLOCK, _gate, from_first_row, pairwise_decay


@triton.jit
def _dscores_kernel(do_ptr, v_ptr, da_ptr, cu_ptr, index_ptr, H, V,
                    C: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """dA[t, s] = dO_t . v_s for s <= t, else 0, on one (chunk, head)."""
    i, h = tl.program_id(0), tl.program_id(1)
    _, start, end = chunk_bounds(cu_ptr, index_ptr, i, C)
    cols = tl.arange(0, C)
    rows = start + cols
    acc = tl.zeros([C, C], dtype=tl.float32)
    for v0 in range(0, V, BV):
        rv = v0 + tl.arange(0, BV)
        acc += tl.dot(load_rows(do_ptr, rows, end, h, H, V, rv),
                      tl.trans(load_rows(v_ptr, rows, end, h, H, V, rv)), input_precision=PREC)
    keep = (cols[None, :] <= cols[:, None]) & (rows[None, :] < end)
    offs = (rows[:, None].to(tl.int64) * H + h) * C + cols[None, :]
    tl.store(da_ptr + offs, tl.where(keep, acc, 0.0), mask=rows[:, None] < end)


@triton.jit
def _dv_kernel(k_ptr, g_ptr, a_ptr, do_ptr, dstates_ptr, dv_ptr, cu_ptr, index_ptr, H, K, V,
               C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
               PREC: tl.constexpr):
    """dV = A^T dO + (K e^{b_C - b}) dS_n on one (chunk, V tile, head)."""
    i, pid_v, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, end = chunk_bounds(cu_ptr, index_ptr, i, C)
    cols = tl.arange(0, C)
    rows, rv = start + cols, pid_v * BV + tl.arange(0, BV)
    a_t = tl.load(a_ptr + (rows[None, :].to(tl.int64) * H + h) * C + cols[:, None],
                  mask=rows[None, :] < end, other=0.0)                              # (s, t)
    acc = tl.dot(a_t, load_rows(do_ptr, rows, end, h, H, V, rv), input_precision=PREC)
    dstate = dstates_ptr + (i * H + h).to(tl.int64) * K * V
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        k = load_rows(k_ptr, rows, end, h, H, K, rk)
        if GATE > 0:
            k *= exp_nonpositive(gate_suffix(g_ptr, rows, end, h, H, K, rk, GATE))      # e^{b_C - b}
        ds = tl.load(dstate + rk[:, None] * V + rv[None, :], mask=(rk[:, None] < K) & (rv[None, :] < V), other=0.0)
        acc += tl.dot(k, ds, input_precision=PREC)
    offs = (rows[:, None].to(tl.int64) * H + h) * V + rv[None, :]
    tl.store(dv_ptr + offs, acc.to(dv_ptr.dtype.element_ty), mask=(rows[:, None] < end) & (rv[None, :] < V))


@triton.jit
def _intra_diagonal_kernel(q_ptr, k_ptr, g_ptr, da_ptr, dq_ptr, dk_ptr, cu_ptr, index_ptr, scale,
                           H, K, C: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                           PREC: tl.constexpr):
    """Diagonal gates: the intra-chunk parts of dq~ and dk on one (chunk, K tile, head), by sub-blocks,
    but for the pairs s = t (added by _dqk_kernel after the gate gradient).

    Earlier key blocks reach row block i through r = its first row; later query rows reach
    key block i through r = its last row (each side's exponent a sum of g up to or from r);
    inside a sub-block the pairwise segment sums are used.
    """
    i, pid_k, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, end = chunk_bounds(cu_ptr, index_ptr, i, C)
    sub, cols = tl.arange(0, S), tl.arange(0, C)
    rows, rk = start + cols, pid_k * BK + tl.arange(0, BK)
    for blk in tl.static_range(C // S):
        r0 = start + blk * S
        rows_i = r0 + sub
        if r0 < end:
            q_i = load_rows(q_ptr, rows_i, end, h, H, K, rk) * scale
            k_i = load_rows(k_ptr, rows_i, end, h, H, K, rk)
            g_i = load_rows(g_ptr, rows_i, end, h, H, K, rk)
            da_ii = load_rows(da_ptr, rows_i, end, h, H, C, blk * S + sub)          # (t, s), causal
            da_ii = tl.where(sub[None, :] < sub[:, None], da_ii, 0.0)             # s = t: in _dqk_kernel
            weighted = da_ii[:, :, None] * pairwise_decay(g_i, S)                  # (t, s, BK)
            dq_i = tl.sum(weighted * k_i[None, :, :], axis=1)
            dk_i = tl.sum(weighted * q_i[:, None, :], axis=0)
            if blk > 0:
                to_r = gate_suffix(g_ptr, rows, r0 + 1, h, H, K, rk, 2)             # g over (s, r0], s < r0
                k_before = tl.where(rows[:, None] < r0, load_rows(k_ptr, rows, end, h, H, K, rk) *
                                    exp_nonpositive(to_r), 0.0)
                da_i = load_rows(da_ptr, rows_i, end, h, H, C, cols)                # (S, C)
                dq_i += tl.dot(da_i, k_before, input_precision=PREC) * exp_nonpositive(from_first_row(g_i, S))
            if blk < C // S - 1:
                r1 = r0 + S - 1                                                     # the block's last row
                from_r = tl.cumsum(tl.where(rows[:, None] > r1, load_rows(g_ptr, rows, end, h, H, K, rk), 0.0),
                                   axis=0)                                          # g over (r1, t], t > r1
                q_after = tl.where(rows[:, None] > r1, load_rows(q_ptr, rows, end, h, H, K, rk) * scale *
                                   exp_nonpositive(from_r), 0.0)
                da_t = tl.load(da_ptr + (rows[None, :].to(tl.int64) * H + h) * C + blk * S + sub[:, None],
                               mask=rows[None, :] < end, other=0.0)                 # (s, t)
                to_r = gate_suffix(g_ptr, rows_i, tl.minimum(r1 + 1, end), h, H, K, rk, 2)   # g over (s, r1]
                dk_i += tl.dot(da_t, q_after, input_precision=PREC) * exp_nonpositive(to_r)
            offs = (rows_i[:, None].to(tl.int64) * H + h) * K + rk[None, :]
            mask = (rows_i[:, None] < end) & (rk[None, :] < K)
            tl.store(dq_ptr + offs, dq_i, mask=mask)
            tl.store(dk_ptr + offs, dk_i, mask=mask)


@triton.jit
def _dqk_kernel(q_ptr, k_ptr, v_ptr, do_ptr, g_ptr, da_ptr, states_ptr, dstates_ptr, dq_intra_ptr,
                dk_intra_ptr, dq_ptr, dk_ptr, dg_ptr, cu_ptr, index_ptr, scale, T_total, H, K, V,
                C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                PREC: tl.constexpr):
    """dq, dk and the gate gradient on one (chunk, K tile, head); see the module docstring."""
    i, pid_k, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, end = chunk_bounds(cu_ptr, index_ptr, i, C)
    cols = tl.arange(0, C)
    rows, rk = start + cols, pid_k * BK + tl.arange(0, BK)
    q = load_rows(q_ptr, rows, end, h, H, K, rk) * scale
    k = load_rows(k_ptr, rows, end, h, H, K, rk)
    # 1. inter-chunk terms: through S_n (output) and dS_n (state write)
    dq = tl.zeros([C, BK], dtype=tl.float32)
    dk = tl.zeros([C, BK], dtype=tl.float32)
    s_dot_ds = tl.zeros([BK], dtype=tl.float32)
    base = (i * H + h).to(tl.int64) * K * V
    for v0 in range(0, V, BV):
        rv = v0 + tl.arange(0, BV)
        kv = base + rk[:, None] * V + rv[None, :]
        kv_mask = (rk[:, None] < K) & (rv[None, :] < V)
        s = tl.load(states_ptr + kv, mask=kv_mask, other=0.0)
        ds = tl.load(dstates_ptr + kv, mask=kv_mask, other=0.0)
        dq += tl.dot(load_rows(do_ptr, rows, end, h, H, V, rv), tl.trans(s), input_precision=PREC)
        dk += tl.dot(load_rows(v_ptr, rows, end, h, H, V, rv), tl.trans(ds), input_precision=PREC)
        s_dot_ds += tl.sum(s * ds, axis=1)
    if GATE > 0:
        g = load_gate(g_ptr, rows, end, h, H, K, rk, GATE)
        b_last = tl.sum(g, axis=0)[None, :]                                      # b_C  (1, BK | 1)
        dq *= exp_nonpositive(tl.cumsum(g, axis=0))                              # e^{b}
        dk *= exp_nonpositive(gate_suffix(g_ptr, rows, end, h, H, K, rk, GATE))  # e^{b_C - b}
        # gradient of b_C: sum_v S_{n+1} dS_n  (1, BK)
        last = s_dot_ds[None, :] * exp_nonpositive(b_last) + tl.sum(k * dk, axis=0)[None, :]
    # 2. intra-chunk terms, the pairs s < t (s = t after step 3)
    da_diag = tl.load(da_ptr + (rows.to(tl.int64) * H + h) * C + cols, mask=rows < end, other=0.0)
    if GATE == 2:
        dq += load_rows(dq_intra_ptr, rows, end, h, H, K, rk)
        dk += load_rows(dk_intra_ptr, rows, end, h, H, K, rk)
    else:
        da = tl.where(cols[None, :] < cols[:, None], load_rows(da_ptr, rows, end, h, H, C, cols), 0.0)
        if GATE == 1:
            g1 = tl.load(g_ptr + rows.to(tl.int64) * H + h, mask=rows < end, other=0.0).to(tl.float32)
            da *= exp_nonpositive(segment_sums(g1, C))                               # e^{b_t - b_s}
        dq += tl.dot(da, k, input_precision=PREC)
        dk += tl.dot(tl.trans(da), q, input_precision=PREC)
    # 3. gate gradient: reverse cumulative sum of db inside the chunk
    if GATE > 0:
        db = q * dq - k * dk + tl.where(rows[:, None] == end - 1, last, 0.0)
        if GATE == 1:
            dg = tl.cumsum(tl.sum(db, axis=1), axis=0, reverse=True)
            tl.store(dg_ptr + (pid_k * T_total + rows.to(tl.int64)) * H + h, dg, mask=rows < end)
        else:
            dg = tl.cumsum(db, axis=0, reverse=True)
            offs = (rows[:, None].to(tl.int64) * H + h) * K + rk[None, :]
            tl.store(dg_ptr + offs, dg, mask=(rows[:, None] < end) & (rk[None, :] < K))
    dq += da_diag[:, None] * k
    dk += da_diag[:, None] * q
    offs = (rows[:, None].to(tl.int64) * H + h) * K + rk[None, :]
    mask = (rows[:, None] < end) & (rk[None, :] < K)
    tl.store(dq_ptr + offs, (dq * scale).to(dq_ptr.dtype.element_ty), mask=mask)
    tl.store(dk_ptr + offs, dk.to(dk_ptr.dtype.element_ty), mask=mask)


def chunk_backward(q, k, v, g, a, do, states, dstates, layout: ChunkLayout, *, scale, prec="ieee"):
    """dq, dk ``[T_total, H, K]`` (q's dtype), dv ``[T_total, H, V]`` and dg (float32, g's shape, or None).

    g: the log gate (None, ``[T_total, H]`` or ``[T_total, H, K]``); a: the forward's scores
    ``[T_total, H, C]``; states: entering states ``[NT, H, K, V]``;
    dstates: gradients of the states leaving each chunk ``[NT, H, K, V]`` (reverse state pass).
    """
    T_total, H, K = q.shape
    V = v.shape[-1]
    C, NT, gate = layout.chunk_size, layout.num_chunks, _gate(g)
    BK, BV = tile(K), tile(V)
    BK_QK = tile(K, 32)                 # dq, dk, q, k, dA tiles live together: 32 keeps them in registers
    NK = triton.cdiv(K, BK_QK)
    chunks = (layout.cu_seqlens, layout.chunk_index)
    da = torch.empty(T_total, H, C, dtype=torch.float32, device=q.device)
    _dscores_kernel[(NT, H)](do, v, da, *chunks, H, V, C=C, BV=BV, PREC=prec)
    dv = torch.empty_like(v)
    g_arg = q if g is None else g
    _dv_kernel[(NT, triton.cdiv(V, BV), H)](k, g_arg, a, do, dstates, dv, *chunks, H, K, V,
                                            C=C, BK=BK, BV=BV, GATE=gate, PREC=prec, num_warps=NUM_WARPS)
    dq_intra = dk_intra = da
    if gate == 2:
        dq_intra, dk_intra = (torch.empty(T_total, H, K, dtype=torch.float32, device=q.device) for _ in range(2))
        BKd = tile(K, 32)                      # (S, S, BK) pairwise tiles: keep them register-sized
        _intra_diagonal_kernel[(NT, triton.cdiv(K, BKd), H)](q, k, g, da, dq_intra, dk_intra, *chunks, scale,
                                                             H, K, C=C, S=min(C, SUB_BLOCK), BK=BKd, PREC=prec)
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dg = None
    if gate == 1:
        dg = torch.empty(NK, T_total, H, dtype=torch.float32, device=q.device)
    elif gate == 2:
        dg = torch.empty(T_total, H, K, dtype=torch.float32, device=q.device)
    _dqk_kernel[(NT, NK, H)](q, k, v, do, g_arg, da, states, dstates, dq_intra, dk_intra, dq, dk,
                             q if dg is None else dg, *chunks, scale, T_total, H, K, V,
                             C=C, BK=BK_QK, BV=BV, GATE=gate, PREC=prec, num_warps=NUM_WARPS)
    if gate == 1:
        dg = dg.sum(0)
    return dq, dk, dv, dg
