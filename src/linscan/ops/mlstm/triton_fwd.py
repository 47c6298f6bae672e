"""Forward kernels of the Triton mLSTM: the state pass over chunks, then every chunk's outputs in parallel.

Notation and layouts: ``triton_parts``. The steps follow ops/mlstm/chunk.py (MATH.md section 3):

    2./3. ``state_fwd_kernel``: one program per (K tile, V tile, sequence, head) walks its chunks,
          writing the (C, n, m) entering each chunk and the final state:
              m_out = max(b_C + m_in, max_s w_s)
              C_out = e^{b_C + m_in - m_out} C_in + sum_s e^{w_s - m_out} k_s v_s^T     (n alike)
    4./5. ``output_fwd_kernel``: one program per (V tile, chunk, head):
              num_t = sum_s (q^_t . k_s) e^{L_ts - m_t} v_s + e^{b_t + m_in - m_t} C_in^T q^_t
              qn_t  = the same with v_s -> 1 and C_in -> n_in
              h_t   = num_t / (max(|qn_t|, e^{-m_t}) + eps)    or    e^{m_t} num_t
          and, for the backward, m_t and qn_t.

Matrix products take their operands in the input dtype (bf16 on the fast path) and accumulate in
float32; gate algebra and states are float32. A float32 operand (weighted keys, states, scores)
enters a product as hi + lo in the input dtype when SPLIT (``dot_left`` / ``dot_right``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..shared.triton import chunk_bounds
from .triton_parts import (chunk_transition, dot_left, dot_right, load_rows, load_token_scalars, log_weights,
                           state_offsets, state_program, store_rows, store_token_scalars, token_max_state, write_log_weights)


@triton.jit
def state_fwd_kernel(k_ptr, v_ptr, b_ptr, lf_ptr, li_ptr, c0_ptr, n0_ptr, m0_ptr,
                     cs_ptr, ns_ptr, ms_ptr, ct_ptr, nt_ptr, mt_ptr, cu_ptr, offsets_ptr, TP,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                     BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     STABILISE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    i_nh, i_kv, i_v, h, bos, eos, first, count, o_k, o_v, offs, mask = state_program(cu_ptr, offsets_ptr, H, K, V, BK, BV)
    mem = tl.load(c0_ptr + offs, mask=mask, other=0.0)                        # (BK, BV)
    norm = tl.load(n0_ptr + i_nh * K + o_k, mask=o_k < K, other=0.0)          # (BK,)
    m = tl.load(m0_ptr + i_nh)
    for j in range(count):
        # the state entering chunk i (n by the first V tile, m by the first program)
        i, start = first + j, bos + j * BT
        offs, mask = state_offsets(i * H + h, K, V, o_k, o_v)
        tl.store(cs_ptr + offs, mem, mask=mask)
        if i_v == 0:
            tl.store(ns_ptr + (i * H + h).to(tl.int64) * K + o_k, norm, mask=o_k < K)
        if i_kv == 0:
            tl.store(ms_ptr + i * H + h, m)
        b = load_token_scalars(b_ptr, h, i, TP, BT)
        li = load_token_scalars(li_ptr, h, i, TP, BT)
        w = write_log_weights(lf_ptr, li, h, i, TP, BT)
        keep, u, m = chunk_transition(b, w, m, BT, STABILISE)
        kk = load_rows(k_ptr, start, eos, h, H, K, o_k, BT)                   # (BT, BK)
        vv = load_rows(v_ptr, start, eos, h, H, V, o_v, BT)                   # (BT, BV)
        ku = kk.to(tl.float32) * u[:, None]
        mem = mem * keep + dot_left(tl.trans(ku), vv, SPLIT, PRECISION)
        norm = norm * keep + tl.sum(ku, axis=0)
    offs, mask = state_offsets(i_nh, K, V, o_k, o_v)
    tl.store(ct_ptr + offs, mem, mask=mask)
    if i_v == 0:
        tl.store(nt_ptr + i_nh * K + o_k, norm, mask=o_k < K)
    if i_kv == 0:
        tl.store(mt_ptr + i_nh, m)


@triton.jit
def output_fwd_kernel(q_ptr, k_ptr, v_ptr, b_ptr, lf_ptr, li_ptr, cs_ptr, ns_ptr, ms_ptr,
                      h_ptr, mtok_ptr, qn_ptr, cu_ptr, index_ptr, TP, scale, eps,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                      BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      STABILISE: tl.constexpr, NORMALIZE: tl.constexpr, SPLIT: tl.constexpr,
                      PRECISION: tl.constexpr):
    i, i_v, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, end = chunk_bounds(cu_ptr, index_ptr, i, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    i_s = i * H + h                                                           # per-chunk index

    # 1. gates of the chunk: log-weights L, per-token max-state m_t, inter-chunk factor g
    b = load_token_scalars(b_ptr, h, i, TP, BT)
    li = load_token_scalars(li_ptr, h, i, TP, BT)
    m_in = tl.load(ms_ptr + i_s)
    logw = log_weights(load_token_scalars(lf_ptr, h, i, TP, BT), li, BT)     # (BT, BT)
    m_t = token_max_state(b, logw, m_in, STABILISE)                           # (BT,)
    g = scale * tl.exp(b + m_in - m_t)                                        # (BT,)

    # 2. scores Q K^T and the readout of the entering state Q C_in (and Q . n_in), over K tiles
    scores = tl.zeros([BT, BT], dtype=tl.float32)
    q_mem = tl.zeros([BT, BV], dtype=tl.float32)
    q_norm = tl.zeros([BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        qq = load_rows(q_ptr, start, end, h, H, K, o_k, BT)                   # (BT, BK)
        kk = load_rows(k_ptr, start, end, h, H, K, o_k, BT)
        scores += tl.dot(qq, tl.trans(kk), input_precision=PRECISION)
        offs, mask = state_offsets(i_s, K, V, o_k, o_v)
        mem = tl.load(cs_ptr + offs, mask=mask, other=0.0)                    # (BK, BV)
        q_mem += dot_right(qq, mem, SPLIT, PRECISION)
        if NORMALIZE:
            norm = tl.load(ns_ptr + i_s.to(tl.int64) * K + o_k, mask=o_k < K, other=0.0)
            q_norm += tl.sum(qq.to(tl.float32) * norm[None, :], axis=1)

    # 3. numerator (and normaliser): intra-chunk weights W_ts = (q^_t . k_s) e^{L_ts - m_t}
    weights = scores * tl.exp(logw - m_t[:, None]) * scale                    # (BT, BT)
    vv = load_rows(v_ptr, start, end, h, H, V, o_v, BT)                       # (BT, BV)
    num = dot_left(weights, vv, SPLIT, PRECISION) + g[:, None] * q_mem

    # 4. readout
    if NORMALIZE:
        qn = tl.sum(weights, axis=1) + g * q_norm
        out = num / (tl.maximum(tl.abs(qn), tl.exp(-m_t)) + eps)[:, None]
        if i_v == 0:
            store_token_scalars(qn_ptr, qn, h, i, TP, BT)
    else:
        out = num * tl.exp(m_t)[:, None]
    if i_v == 0:
        store_token_scalars(mtok_ptr, m_t, h, i, TP, BT)
    store_rows(h_ptr, out, start, end, h, H, V, o_v, BT)
