"""Forward kernels of the decay family's Triton backend (MATH.md section 1, chunkwise form).

Every kernel works on one chunk of C tokens of one head (flat token axis, see
``ops/shared/triton.py``) and reads the log gate g itself; ``b`` is its chunk-local
cumulative sum, b_C its chunk total.

    writes   W_n = (X * e^{c})^T Y               per-chunk state writes (also the backward's dS terms)
    scores   A_ts = sum_k q_tk k_sk e^{b_tk - b_sk} (s <= t)   intra-chunk scores (sub-blocks for diagonal gates)
    output   O = A V + (Q e^{b}) S_n             intra + inter output from the entering state S_n

Every decay between two tokens is computed from a sum of g over the tokens it spans
(e^{b_t - b_s} = e^{g_{s+1} + ... + g_t}, e^{b_C - b_s} from a suffix sum), never from a
difference of cumulative sums, which cancels after one strong decay (g = -1e4: float32
digits lost) or is NaN after g = -inf (ops/segsum.py). The prefixes e^{b} are sums already.
Extra work per (chunk, K tile) against that form: a [C, BK] (reverse) cumulative sum of g for
every prefix or suffix, the scalar gate's [C, C] segment sums, and for diagonal gates the
[S, S, BK] segment sums of each sub-block plus two [C, BK] cumulative sums per sub-block (its
reference-point decays): adds of the order of the C^2 K multiply-adds of the scores, not more.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..shared.triton import (ChunkLayout, chunk_bounds, exp_nonpositive, gate_suffix, load_gate, load_rows,
                             segment_sums, tile)

SUB_BLOCK = 16          # diagonal gates: pairwise exponents inside 16-token sub-blocks
NUM_WARPS = 8           # [64, 64] float32 tiles: 4 warps spill registers on sm_90 (ptxas -v)


@triton.jit
def _writes_kernel(x_ptr, y_ptr, g_ptr, out_ptr, cu_ptr, index_ptr, scale, H, K, V,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                   FROM_END: tl.constexpr, PREC: tl.constexpr):
    """out[n] = scale * (X * e^{c})^T Y on one (chunk, K x V tile, head); c_s = b_C - b_s (the
    suffix sum g_{s+1} + ... + g_C) if FROM_END else b_s (the prefix sum)."""
    i, pid, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    k0 = (pid // tl.cdiv(V, BV)) * BK
    v0 = (pid % tl.cdiv(V, BV)) * BV
    _, start, end = chunk_bounds(cu_ptr, index_ptr, i, C)
    rows, rk, rv = start + tl.arange(0, C), k0 + tl.arange(0, BK), v0 + tl.arange(0, BV)
    x = load_rows(x_ptr, rows, end, h, H, K, rk)
    if GATE > 0:
        if FROM_END:
            x *= exp_nonpositive(gate_suffix(g_ptr, rows, end, h, H, K, rk, GATE))
        else:
            x *= exp_nonpositive(tl.cumsum(load_gate(g_ptr, rows, end, h, H, K, rk, GATE), axis=0))
    acc = tl.dot(tl.trans(x), load_rows(y_ptr, rows, end, h, H, V, rv), input_precision=PREC)
    offs = (i * H + h).to(tl.int64) * K * V + rk[:, None] * V + rv[None, :]
    tl.store(out_ptr + offs, acc * scale, mask=(rk[:, None] < K) & (rv[None, :] < V))


def chunk_writes(x, y, g, layout: ChunkLayout, *, scale=1.0, from_end=True, prec="ieee"):
    """Per-chunk ``scale * (x * e^{c})^T y`` with ``c = b_last - b`` (from_end) or ``c = b``
    (b the chunk-local cumulative sum of g; both taken as sums of g in the kernel).

    Args:
        x: ``[T_total, H, K]``; y: ``[T_total, H, V]``; g: None, ``[T_total, H]`` or ``[T_total, H, K]``.
    Returns:
        ``[NT, H, K, V]`` float32. Forward: the writes W_n (x = k, y = v, from_end);
        backward: the output's state gradient terms (x = q, y = dO, c = b).
    """
    T_total, H, K = x.shape
    V = y.shape[-1]
    out = torch.empty(layout.num_chunks, H, K, V, dtype=torch.float32, device=x.device)
    BK, BV = tile(K), tile(V)
    grid = (layout.num_chunks, triton.cdiv(K, BK) * triton.cdiv(V, BV), H)
    _writes_kernel[grid](x, y, x if g is None else g, out, layout.cu_seqlens, layout.chunk_index,
                         scale, H, K, V, C=layout.chunk_size, BK=BK, BV=BV, GATE=_gate(g),
                         FROM_END=from_end, PREC=prec)
    return out


@triton.jit
def pairwise_decay(g_i, S: tl.constexpr):
    """e^{g_{s+1} + ... + g_t} = e^{b_t - b_s} for t, s of one sub-block, ``[S, S, BK]``, from its
    log gates ``g_i [S, BK]`` (segment sums down the columns, as ``segment_sums``); 1 for s >= t."""
    o = tl.arange(0, S)
    below = (o[:, None] > o[None, :])[:, :, None]
    return exp_nonpositive(tl.cumsum(tl.where(below, g_i[:, None, :], 0.0), axis=0))


@triton.jit
def from_first_row(g_i, S: tl.constexpr):
    """g_{r+1} + ... + g_t for the rows t of a sub-block whose first row is r: ``[S, BK]``."""
    return tl.cumsum(tl.where(tl.arange(0, S)[:, None] > 0, g_i, 0.0), axis=0)


@triton.jit
def _diagonal_block_scores(q_ptr, k_ptr, g_ptr, start, end, h, H, K, i: tl.constexpr,
                           C: tl.constexpr, S: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Rows of sub-block i of A for a diagonal gate, unmasked: (earlier columns ``[S, C]``,
    the diagonal sub-block ``[S, S]``).

    Earlier sub-blocks meet row block i through the reference r = its first row:
    e^{b_t - b_r} (a prefix sum inside the block) and e^{b_r - b_s} (a suffix sum up to r)
    are both <= 1. Inside the diagonal sub-block the pairwise segment sums are used.
    """
    r0 = start + i * S
    rows_i, rows = r0 + tl.arange(0, S), start + tl.arange(0, C)
    before = tl.zeros([S, C], dtype=tl.float32)
    diag = tl.zeros([S, S], dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        q_i = load_rows(q_ptr, rows_i, end, h, H, K, rk)
        g_i = load_rows(g_ptr, rows_i, end, h, H, K, rk)
        if i > 0:
            k_all = load_rows(k_ptr, rows, end, h, H, K, rk)
            to_r = gate_suffix(g_ptr, rows, r0 + 1, h, H, K, rk, 2)                # (C, BK), s < r
            k_before = tl.where(rows[:, None] < r0, k_all * exp_nonpositive(to_r), 0.0)
            q_from_r = q_i * exp_nonpositive(from_first_row(g_i, S))
            before += tl.dot(q_from_r, tl.trans(k_before), input_precision=PREC)
        k_i = load_rows(k_ptr, rows_i, end, h, H, K, rk)
        diag += tl.sum(q_i[:, None, :] * k_i[None, :, :] * pairwise_decay(g_i, S), axis=2)
    return before, diag


@triton.jit
def _scores_kernel(q_ptr, k_ptr, g_ptr, a_ptr, cu_ptr, index_ptr, scale, H, K,
                   C: tl.constexpr, S: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr,
                   PREC: tl.constexpr):
    """A[t, s] = scale * sum_k q_tk k_sk e^{b_tk - b_sk} for s <= t, else 0, on one (chunk, head)."""
    i, h = tl.program_id(0), tl.program_id(1)
    _, start, end = chunk_bounds(cu_ptr, index_ptr, i, C)
    cols = tl.arange(0, C)
    if GATE == 2:
        sub = tl.arange(0, S)
        for blk in tl.static_range(C // S):
            rows_i = start + blk * S + sub
            if start + blk * S < end:
                before, diag = _diagonal_block_scores(q_ptr, k_ptr, g_ptr, start, end, h, H, K, blk,
                                                      C, S, BK, PREC)
                offs = (rows_i[:, None].to(tl.int64) * H + h) * C + cols[None, :]
                valid = rows_i[:, None] < end
                # two disjoint stores: columns outside the diagonal sub-block, then inside it
                outside = (cols[None, :] < blk * S) | (cols[None, :] >= blk * S + S)
                tl.store(a_ptr + offs, before * scale, mask=valid & outside)
                keep = (sub[None, :] <= sub[:, None]) & (rows_i[None, :] < end)
                diag_offs = (rows_i[:, None].to(tl.int64) * H + h) * C + blk * S + sub[None, :]
                tl.store(a_ptr + diag_offs, tl.where(keep, diag * scale, 0.0), mask=valid)
    else:
        rows = start + cols
        acc = tl.zeros([C, C], dtype=tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            acc += tl.dot(load_rows(q_ptr, rows, end, h, H, K, rk),
                          tl.trans(load_rows(k_ptr, rows, end, h, H, K, rk)), input_precision=PREC)
        if GATE == 1:
            g = tl.load(g_ptr + rows.to(tl.int64) * H + h, mask=rows < end, other=0.0).to(tl.float32)
            acc *= exp_nonpositive(segment_sums(g, C))
        keep = (cols[None, :] <= cols[:, None]) & (rows[None, :] < end)
        offs = (rows[:, None].to(tl.int64) * H + h) * C + cols[None, :]
        tl.store(a_ptr + offs, tl.where(keep, acc * scale, 0.0), mask=rows[:, None] < end)


def chunk_scores(q, k, g, layout: ChunkLayout, *, scale, prec="ieee"):
    """Intra-chunk scores A ``[T_total, H, C]`` float32 (row t holds A[t, s] for the chunk's s; causal).

    q, k: ``[T_total, H, K]``; g: None, ``[T_total, H]`` or ``[T_total, H, K]`` log gate.
    """
    T_total, H, K = q.shape
    C = layout.chunk_size
    a = torch.empty(T_total, H, C, dtype=torch.float32, device=q.device)
    _scores_kernel[(layout.num_chunks, H)](
        q, k, q if g is None else g, a, layout.cu_seqlens, layout.chunk_index, scale, H, K,
        C=C, S=min(C, SUB_BLOCK), BK=tile(K, 32 if _gate(g) == 2 else 64), GATE=_gate(g), PREC=prec,
        num_warps=NUM_WARPS)
    return a


@triton.jit
def _output_kernel(q_ptr, v_ptr, g_ptr, a_ptr, states_ptr, o_ptr, cu_ptr, index_ptr, scale, H, K, V,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                   PREC: tl.constexpr):
    """O = A V + scale (Q e^{b}) S_n on one (chunk, V tile, head)."""
    i, pid_v, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, end = chunk_bounds(cu_ptr, index_ptr, i, C)
    rows, rv = start + tl.arange(0, C), pid_v * BV + tl.arange(0, BV)
    a = load_rows(a_ptr, rows, end, h, H, C, tl.arange(0, C))
    acc = tl.dot(a, load_rows(v_ptr, rows, end, h, H, V, rv), input_precision=PREC)
    state = states_ptr + (i * H + h).to(tl.int64) * K * V
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        q = load_rows(q_ptr, rows, end, h, H, K, rk) * scale
        if GATE > 0:
            q *= exp_nonpositive(tl.cumsum(load_gate(g_ptr, rows, end, h, H, K, rk, GATE), axis=0))   # e^{b}
        s = tl.load(state + rk[:, None] * V + rv[None, :], mask=(rk[:, None] < K) & (rv[None, :] < V), other=0.0)
        acc += tl.dot(q, s, input_precision=PREC)
    offs = (rows[:, None].to(tl.int64) * H + h) * V + rv[None, :]
    tl.store(o_ptr + offs, acc.to(o_ptr.dtype.element_ty), mask=(rows[:, None] < end) & (rv[None, :] < V))


def chunk_output(q, v, g, a, states, layout: ChunkLayout, *, scale, prec="ieee"):
    """o ``[T_total, H, V]`` in q's dtype.

    q: ``[T_total, H, K]``; v: ``[T_total, H, V]``; g: None, ``[T_total, H]`` or ``[T_total, H, K]``;
    a: the scores ``[T_total, H, C]``; states: the states entering every chunk ``[NT, H, K, V]``.
    """
    T_total, H, K = q.shape
    V = v.shape[-1]
    o = torch.empty(T_total, H, V, dtype=q.dtype, device=q.device)
    BV = tile(V)
    _output_kernel[(layout.num_chunks, triton.cdiv(V, BV), H)](
        q, v, q if g is None else g, a, states, o, layout.cu_seqlens, layout.chunk_index, scale,
        H, K, V, C=layout.chunk_size, BK=tile(K), BV=BV, GATE=_gate(g), PREC=prec, num_warps=NUM_WARPS)
    return o


def _gate(g) -> int:
    """0: no gate, 1: scalar ``[T_total, H]``, 2: diagonal ``[T_total, H, K]``."""
    return 0 if g is None else (2 if g.dim() == 3 else 1)
