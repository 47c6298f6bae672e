"""Backward kernels of the Triton mLSTM (notation and layouts: ``triton_parts``).

The forward of a chunk, with the max-states held fixed, is smooth in (q, k, v, b, li, states):

    W_ts = scale (q_t . k_s) P_ts,  P_ts = e^{L_ts - m_t};   g_t = scale e^{b_t + m_in - m_t}
    num_t = sum_s W_ts v_s + g_t C_in^T q_t,   qn_t = sum_s W_ts + g_t n_in . q_t
    C_out = keep C_in + sum_s u_s k_s v_s^T,   n_out = keep n_in + sum_s u_s k_s

The readout gives dnum_t = c_t dh_t, dqn_t and a direct dm_t (computed in PyTorch from m_t, qn_t).
Then, with dW_ts = dnum_t . v_s + dqn_t and M_ts = scale dW_ts P_ts:

    1. ``state_bwd_kernel`` (reverse pass over each sequence's chunks, per K x V tile and head):
       the gradient of the state leaving every chunk, dC_out (and dn_out), from
       dC_in = keep dC_out + sum_t g_t q_t dnum_t^T.
    2. ``chunk_bwd_kernel`` (every chunk in parallel):
           dq_t = sum_s M_ts k_s + g_t (C_in dnum_t + dqn_t n_in)
           dk_s = sum_t M_ts q_t + u_s (dC_out v_s + dn_out)
           dv_s = sum_t W_ts dnum_t + u_s dC_out^T k_s
       and the log-space gradients of the exponents. With
           D_ts = M_ts (q_t . k_s)  (= dW_ts W_ts)    row sums R_t, column sums S_s
           E_t = q_t . g_t (C_in dnum_t + dqn_t n_in),  F_s = k_s . u_s (dC_out v_s + dn_out)
           G = keep (<C_in, dC_out> + <n_in, dn_out>)   per chunk
       the exponents L_ts - m_t (get D), b_t + m_in - m_t (E), w_s - m_out (F) and
       b_C + m_in - m_out (G) give
           db_t = R_t - S_t + E_t - F_t  (+ G + sum F at the last token),  dli_s = S_s + F_s
           dm_t = dm_readout_t - R_t - E_t  (- G - sum F + dm_out at the last token)
       and the max-state routes dm_t to the side that won m_t = max(b_t + m_in, L_ts*) (as
       torch.maximum / max do): to (b_t, m_in) or to (b_t, -b_s*, li_s*) (L_ts = b_t - b_s + li_s in
       exact arithmetic). Last, dlf = reverse cumsum of db within the chunk. All of it is local to
       the chunk except dm_out = dm_in of the next chunk, so the kernel stores
           dm_in = carry + open * dm_out   (open = 1 if m_in won at the last token, else 0)
       and the part of the gradients without dm_out.
    3. ``max_state_scan_kernel`` (per sequence and head): dm_in of every chunk, from the last
       backwards, as a scan of those affine maps; then (in PyTorch) dm_out joins the gates of
       its chunk's last token: dlf_r += dm_out (m_in won) or dm_out [r > s*] and dli_s* += dm_out.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..shared.triton import chunk_bounds
from .triton_parts import (chunk_transition, dot_left, dot_right, last, load_rows, load_token_scalars,
                           log_weights, state_offsets, state_program, store_rows, store_token_scalars, write_log_weights)


@triton.jit
def state_bwd_kernel(q_ptr, dh_ptr, b_ptr, lf_ptr, li_ptr, ms_ptr, mtok_ptr, c_ptr, dqn_ptr, dct_ptr, dnt_ptr,
                     dcs_ptr, dns_ptr, dc0_ptr, dn0_ptr, cu_ptr, offsets_ptr, TP, scale,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                     BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     STABILISE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    i_nh, i_kv, i_v, h, bos, eos, first, count, o_k, o_v, offs, mask = state_program(cu_ptr, offsets_ptr, H, K, V, BK, BV)
    d_mem = tl.load(dct_ptr + offs, mask=mask, other=0.0)                     # (BK, BV)
    d_norm = tl.load(dnt_ptr + i_nh * K + o_k, mask=o_k < K, other=0.0)       # (BK,)
    for jj in range(count):
        j = count - 1 - jj
        i, start = first + j, bos + j * BT
        offs, mask = state_offsets(i * H + h, K, V, o_k, o_v)
        tl.store(dcs_ptr + offs, d_mem, mask=mask)
        if i_v == 0:
            tl.store(dns_ptr + (i * H + h).to(tl.int64) * K + o_k, d_norm, mask=o_k < K)
        b = load_token_scalars(b_ptr, h, i, TP, BT)
        li = load_token_scalars(li_ptr, h, i, TP, BT)
        m_in = tl.load(ms_ptr + i * H + h)
        w = write_log_weights(lf_ptr, li, h, i, TP, BT)
        keep, _, _ = chunk_transition(b, w, m_in, BT, STABILISE)
        g = scale * tl.exp(b + m_in - load_token_scalars(mtok_ptr, h, i, TP, BT))
        c = load_token_scalars(c_ptr, h, i, TP, BT)
        dqn = load_token_scalars(dqn_ptr, h, i, TP, BT)
        qq = load_rows(q_ptr, start, eos, h, H, K, o_k, BT)                   # (BT, BK)
        dh = load_rows(dh_ptr, start, eos, h, H, V, o_v, BT)                  # (BT, BV)
        qg = qq.to(tl.float32) * g[:, None]
        d_mem = d_mem * keep + dot_left(tl.trans(qg * c[:, None]), dh, SPLIT, PRECISION)   # dnum = c dh
        d_norm = d_norm * keep + tl.sum(qg * dqn[:, None], axis=0)
    offs, mask = state_offsets(i_nh, K, V, o_k, o_v)
    tl.store(dc0_ptr + offs, d_mem, mask=mask)
    if i_v == 0:
        tl.store(dn0_ptr + i_nh * K + o_k, d_norm, mask=o_k < K)


@triton.jit
def chunk_bwd_kernel(q_ptr, k_ptr, v_ptr, dh_ptr, b_ptr, lf_ptr, li_ptr, ms_ptr, mtok_ptr, c_ptr, dqn_ptr, dmr_ptr,
                     cs_ptr, ns_ptr, dcs_ptr, dns_ptr, dq_ptr, dk_ptr, dv_ptr, dli_ptr, dlf_ptr,
                     carry_ptr, open_ptr, best_ptr, cu_ptr, index_ptr, TP, scale,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                     BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     STABILISE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    i, h = tl.program_id(0), tl.program_id(1)
    _, start, end = chunk_bounds(cu_ptr, index_ptr, i, BT)
    i_s = i * H + h                                                           # per-chunk index

    # gates: P = e^{L - m_t}, g, and the state transition (keep, u)
    b = load_token_scalars(b_ptr, h, i, TP, BT)
    li = load_token_scalars(li_ptr, h, i, TP, BT)
    m_in = tl.load(ms_ptr + i_s)
    m_t = load_token_scalars(mtok_ptr, h, i, TP, BT)
    probs = tl.exp(log_weights(load_token_scalars(lf_ptr, h, i, TP, BT), li, BT) - m_t[:, None])  # (BT, BT)
    g = scale * tl.exp(b + m_in - m_t)
    keep, u, _ = chunk_transition(b, write_log_weights(lf_ptr, li, h, i, TP, BT), m_in, BT, STABILISE)
    c = load_token_scalars(c_ptr, h, i, TP, BT)
    dqn = load_token_scalars(dqn_ptr, h, i, TP, BT)

    # scores S = Q K^T and dW = dNum V^T + dqn; W, M = scale dW P, D = M S
    scores = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        qq = load_rows(q_ptr, start, end, h, H, K, o_k, BT)
        kk = load_rows(k_ptr, start, end, h, H, K, o_k, BT)
        scores += tl.dot(qq, tl.trans(kk), input_precision=PRECISION)
    d_weights = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        vv = load_rows(v_ptr, start, end, h, H, V, o_v, BT)
        dh = load_rows(dh_ptr, start, end, h, H, V, o_v, BT)
        d_weights += tl.dot(dh, tl.trans(vv), input_precision=PRECISION)
    d_weights = d_weights * c[:, None] + dqn[:, None]                          # dnum = c dh
    weights = scores * probs * scale
    d_scores = d_weights * probs * scale                                      # M
    d_log = d_scores * scores                                                 # D
    r_sum, c_sum = tl.sum(d_log, axis=1), tl.sum(d_log, axis=0)

    # dv = W^T dNum + u (K dC_out), per V tile; G's <C_in, dC_out> on the way
    g_sum = 0.0
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        dh = load_rows(dh_ptr, start, end, h, H, V, o_v, BT)
        dv = dot_left(tl.trans(weights * c[:, None]), dh, False, PRECISION)
        k_dmem = tl.zeros([BT, BV], dtype=tl.float32)
        for i_k in range(tl.cdiv(K, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            kk = load_rows(k_ptr, start, end, h, H, K, o_k, BT)
            offs, mask = state_offsets(i_s, K, V, o_k, o_v)
            d_mem = tl.load(dcs_ptr + offs, mask=mask, other=0.0)
            k_dmem += tl.dot(kk, d_mem.to(kk.dtype), input_precision=PRECISION)
            g_sum += tl.sum(tl.load(cs_ptr + offs, mask=mask, other=0.0) * d_mem)
        store_rows(dv_ptr, dv + u[:, None] * k_dmem, start, end, h, H, V, o_v, BT)

    # dq = M K + g (dNum C_in^T + dqn n_in), dk = M^T Q + u (V dC_out^T + dn_out), per K tile
    e_tok = tl.zeros([BT], dtype=tl.float32)
    f_tok = tl.zeros([BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        qq = load_rows(q_ptr, start, end, h, H, K, o_k, BT)
        kk = load_rows(k_ptr, start, end, h, H, K, o_k, BT)
        dq = tl.dot(d_scores.to(kk.dtype), kk, input_precision=PRECISION)
        dk = tl.dot(tl.trans(d_scores.to(qq.dtype)), qq, input_precision=PRECISION)
        q_in = tl.zeros([BT, BK], dtype=tl.float32)
        k_in = tl.zeros([BT, BK], dtype=tl.float32)
        for i_v in range(tl.cdiv(V, BV)):
            o_v = i_v * BV + tl.arange(0, BV)
            vv = load_rows(v_ptr, start, end, h, H, V, o_v, BT)
            dh = load_rows(dh_ptr, start, end, h, H, V, o_v, BT)
            offs, mask = state_offsets(i_s, K, V, o_k, o_v)
            mem = tl.load(cs_ptr + offs, mask=mask, other=0.0)
            d_mem = tl.load(dcs_ptr + offs, mask=mask, other=0.0)
            q_in += dot_right(dh, tl.trans(mem), SPLIT, PRECISION)
            k_in += dot_right(vv, tl.trans(d_mem), SPLIT, PRECISION)
        n_offs = i_s.to(tl.int64) * K + o_k
        norm = tl.load(ns_ptr + n_offs, mask=o_k < K, other=0.0)
        d_norm = tl.load(dns_ptr + n_offs, mask=o_k < K, other=0.0)
        q_in = g[:, None] * (c[:, None] * q_in + dqn[:, None] * norm[None, :])
        k_in = u[:, None] * (k_in + d_norm[None, :])
        g_sum += tl.sum(norm * d_norm)
        e_tok += tl.sum(qq.to(tl.float32) * q_in, axis=1)
        f_tok += tl.sum(kk.to(tl.float32) * k_in, axis=1)
        store_rows(dq_ptr, dq + q_in, start, end, h, H, K, o_k, BT)
        store_rows(dk_ptr, dk + k_in, start, end, h, H, K, o_k, BT)
    g_sum = keep * g_sum

    # gate gradients (in log space) of this chunk, all but the max-state carried in from the next one
    o = tl.arange(0, BT)
    at_last = o == BT - 1
    f_all = tl.sum(f_tok, axis=0)
    d_b = r_sum - c_sum + e_tok - f_tok + tl.where(at_last, g_sum + f_all, 0.0)
    d_li = c_sum + f_tok
    if STABILISE:
        # which side won m_t = max(b_t + m_in, L_ts*) (as torch.maximum / max route gradients);
        # L recomputed here rather than kept alive through the matrix products
        logw = log_weights(load_token_scalars(lf_ptr, h, i, TP, BT), li, BT)  # (BT, BT)
        from_init = b + m_in >= tl.max(logw, axis=1)                          # (BT,)
        best = tl.argmax(logw, axis=1)                                        # s* per row t
        d_m = (load_token_scalars(dmr_ptr, h, i, TP, BT) - r_sum - e_tok
               + tl.where(at_last, -g_sum - f_all, 0.0))
        routed = tl.where(from_init, 0.0, d_m)
        to_best = tl.sum(tl.where(o[None, :] == best[:, None], routed[:, None], 0.0), axis=0)
        d_b += d_m - to_best
        d_li += to_best
        # dm_in = carry + open * dm_out: what reaches m_in, and how dm_out (= dm_in of the next chunk)
        # passes through the last token: to m_in (open) or to its best write s*
        tl.store(carry_ptr + i_s, tl.sum(e_tok, axis=0) + g_sum + tl.sum(tl.where(from_init, d_m, 0.0), axis=0))
        tl.store(open_ptr + i_s, last(from_init.to(tl.float32), BT))
        tl.store(best_ptr + i_s, tl.sum(tl.where(at_last, best, 0), axis=0))
    store_token_scalars(dli_ptr, d_li, h, i, TP, BT)
    store_token_scalars(dlf_ptr, tl.cumsum(d_b, axis=0, reverse=True), h, i, TP, BT)


@triton.jit
def _compose(carry_a, open_a, carry_b, open_b):
    """Affine maps y -> carry + open * y, a applied first: b(a(y))."""
    return carry_b + open_b * carry_a, open_a * open_b


@triton.jit
def max_state_scan_kernel(carry_ptr, open_ptr, dmt_ptr, dmin_ptr, dm0_ptr, offsets_ptr,
                          H: tl.constexpr, BN: tl.constexpr):
    """dm_in of every chunk of a sequence, from its last chunk backwards:
    dm_in(i) = carry_i + open_i * dm_in(i + 1), dm_in(last + 1) = dL/dm_T; blocks of BN chunks
    composed by an associative scan."""
    i_nh = tl.program_id(0)
    n, h = i_nh // H, i_nh % H
    first = tl.load(offsets_ptr + n).to(tl.int32)
    count = tl.load(offsets_ptr + n + 1).to(tl.int32) - first
    y = tl.load(dmt_ptr + i_nh)
    for blk in range(tl.cdiv(count, BN)):
        step = blk * BN + tl.arange(0, BN)                   # chunks last - step, backwards
        valid = step < count
        idx = (first + count - 1 - step) * H + h
        carry = tl.load(carry_ptr + idx, mask=valid, other=0.0)
        opened = tl.load(open_ptr + idx, mask=valid, other=1.0)
        carry, opened = tl.associative_scan((carry, opened), 0, _compose)
        dm_in = carry + opened * y
        tl.store(dmin_ptr + idx, dm_in, mask=valid)
        y = tl.sum(tl.where(step == tl.minimum(blk * BN + BN, count) - 1, dm_in, 0.0), axis=0)
    tl.store(dm0_ptr + i_nh, y)
