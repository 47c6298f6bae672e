"""Triton backward kernels of the delta family: the forward's steps run in reverse (layout and
notation of ``triton_fwd.py``; the same algebra as the hand-written backward of ``chunk.py``).

    4'a. the part of dV_new that needs no state, chunk-parallel: dV_new = P^T dO
    3'. reverse state pass (grid V tiles x sequences * H, a loop over the chunks, last first):
            dV_new += (K e^{b_L - b}) dS_exit
            dS_enter = (Q e^{b_tok})^T dO + e^{b_L} dS_exit - W^T dV_new
    4'/2'/1'. everything else, chunk-parallel (grid chunks x H), with the states entering (h) and
        the gradients leaving (dh) every chunk from the state passes:
            dP = dO V_new^T,  d(Q e^{b_tok}) = dO S^T,  dW = -dV_new S^T,  d(K e^{b_L-b}) = V_new dS^T
            [dU | dW] back through the inverse: d_rhs = T_inv^T [dV_new | dW],
            -dA = strictly_lower(d_rhs [U | W]^T), then dq, dk, dv, dbeta and the gate's
            gradient through every place b entered (reverse cumulative sums over rows and tokens),
            fed the decays of the forward (sums of gates over the rows they span, never differences).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_fwd import (chunk_gates, chunk_tokens, load_vector, load_tile, read_chunk, read_scores, row_decay,
                         state_offsets, store_tile)


@triton.jit
def _dv_local_kernel(q_ptr, k_ptr, g_ptr, do_ptr, dvnew_ptr, cu_ptr, index_ptr, scale, H, K, V,
                     C: tl.constexpr, R: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
                     BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr, DOT: tl.constexpr):
    """Step 4'a for one V tile, chunk and head: dV_new = P^T dO (kept out of the sequential pass,
    whose shared memory it would otherwise double)."""
    pid, h, v0, t0, n_tok, row0, n_rows, q, b_tok, p = read_chunk(q_ptr, k_ptr, g_ptr, cu_ptr, index_ptr, scale,
                                                                 H, K, C, R, BL, BC, BK, BV, HAS_G, DOT)
    d_o = load_tile(do_ptr, t0, n_tok, H, h, V, v0, BC, BV)
    d_v_new = tl.dot(tl.trans(p), d_o, input_precision=DOT)
    store_tile(dvnew_ptr, d_v_new, row0, n_rows, H, h, V, v0, BL, BV)


@triton.jit
def _dstate_kernel(q_ptr, k_ptr, g_ptr, w_ptr, do_ptr, dvnew_ptr, dh_ptr, dht_ptr, dh0_ptr, cu_ptr,
                   offsets_ptr, scale, H, K, V, C: tl.constexpr, R: tl.constexpr, BL: tl.constexpr,
                   BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr,
                   HAS_DHT: tl.constexpr, DOT: tl.constexpr):
    """Step 3' for one sequence, head and V tile: completes the dV_new rows (in place), stores the
    gradient of the state leaving every chunk (dh) and that of the initial state (dh0)."""
    vt, ih = tl.program_id(0), tl.program_id(1)
    i, h = ih // H, ih % H
    v0 = vt * BV
    bos = tl.load(cu_ptr + i).to(tl.int64)
    eos = tl.load(cu_ptr + i + 1).to(tl.int64)
    first = tl.load(offsets_ptr + i).to(tl.int64)
    n_chunks = tl.cdiv(eos - bos, C)
    offs, mask = state_offsets(i, H, h, K, V, v0, BK, BV)
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dS = tl.load(dht_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for jj in range(0, n_chunks):
        j = n_chunks - 1 - jj
        t0 = bos + j * C
        n_tok = tl.minimum(eos - t0, C)
        row0, n_rows = t0 * R, n_tok * R
        dh_offs, _ = state_offsets(first + j, H, h, K, V, v0, BK, BV)
        tl.store(dh_ptr + dh_offs, dS, mask=mask)
        _, _, _, b_tok, b_out, b_last = chunk_gates(g_ptr, t0, n_tok, H, h, R, BL, BC, HAS_G)
        q = load_tile(q_ptr, t0, n_tok, H, h, K, 0, BC, BK) * scale
        k = load_tile(k_ptr, row0, n_rows, H, h, K, 0, BL, BK)
        d_o = load_tile(do_ptr, t0, n_tok, H, h, V, v0, BC, BV)
        k_out = k * tl.exp(b_out)[:, None]
        d_v_new = load_tile(dvnew_ptr, row0, n_rows, H, h, V, v0, BL, BV)
        d_v_new += tl.dot(k_out, dS, input_precision=DOT)
        store_tile(dvnew_ptr, d_v_new, row0, n_rows, H, h, V, v0, BL, BV)
        w = load_tile(w_ptr, row0, n_rows, H, h, K, 0, BL, BK)
        q_in = q * tl.exp(b_tok)[:, None]
        dS = dS * tl.exp(b_last) + tl.dot(tl.trans(q_in), d_o, input_precision=DOT)
        dS -= tl.dot(tl.trans(w), d_v_new, input_precision=DOT)
    tl.store(dh0_ptr + offs, dS, mask=mask)


@triton.jit
def reverse_cumsum(x, BN: tl.constexpr):
    """y_i = sum_{j >= i} x_j for x [BN] (the adjoint of a cumulative sum)."""
    n = tl.arange(0, BN)
    return tl.sum(tl.where(n[None, :] >= n[:, None], x[None, :], 0.0), 1)


@triton.jit
def _grad_kernel(q_ptr, k_ptr, v_ptr, beta_ptr, g_ptr, ti_ptr, w_ptr, u_ptr, h_ptr, dh_ptr,
                 vnew_ptr, dvnew_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, dbeta_ptr, dg_ptr, cu_ptr,
                 index_ptr, scale, H, K, V, C: tl.constexpr, R: tl.constexpr,
                 BL: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 HAS_G: tl.constexpr, DOT: tl.constexpr):
    """Steps 4', 2' and 1' for one chunk and head: dq, dk, dv, dbeta and dg (float32)."""
    pid, h = tl.program_id(0), tl.program_id(1)
    t0, n_tok = chunk_tokens(cu_ptr, index_ptr, pid, C)
    row0, n_rows = t0 * R, n_tok * R
    g_rows, g_tok, b, b_tok, b_out, b_last = chunk_gates(g_ptr, t0, n_tok, H, h, R, BL, BC, HAS_G)
    r = tl.arange(0, BL)
    t_inv = tl.load(ti_ptr + (pid.to(tl.int64) * H + h) * BL * BL + r[:, None] * BL + r[None, :])
    beta = load_vector(beta_ptr, row0, n_rows, H, h, BL)
    # 4'. and 3'. contributions summed over the V tiles
    d_scores = tl.zeros([BC, BL], dtype=tl.float32)
    d_q_in = tl.zeros([BC, BK], dtype=tl.float32)
    d_w = tl.zeros([BL, BK], dtype=tl.float32)
    d_k_out = tl.zeros([BL, BK], dtype=tl.float32)
    minus_d_A = tl.zeros([BL, BL], dtype=tl.float32)
    d_beta = tl.zeros([BL], dtype=tl.float32)
    from_decay = tl.zeros([BV], dtype=tl.float32)
    for v0 in range(0, V, BV):
        offs, mask = state_offsets(pid, H, h, K, V, v0, BK, BV)
        S = tl.load(h_ptr + offs, mask=mask, other=0.0)
        dS = tl.load(dh_ptr + offs, mask=mask, other=0.0)
        v_new = load_tile(vnew_ptr, row0, n_rows, H, h, V, v0, BL, BV)
        d_v_new = load_tile(dvnew_ptr, row0, n_rows, H, h, V, v0, BL, BV)
        d_o = load_tile(do_ptr, t0, n_tok, H, h, V, v0, BC, BV)
        d_scores += tl.dot(d_o, tl.trans(v_new), input_precision=DOT)
        d_q_in += tl.dot(d_o, tl.trans(S), input_precision=DOT)
        d_w -= tl.dot(d_v_new, tl.trans(S), input_precision=DOT)
        d_k_out += tl.dot(v_new, tl.trans(dS), input_precision=DOT)
        from_decay += tl.sum(S * dS, 0)
        # 2'. the U half of the UT transform, one V tile at a time
        d_rhs_v = tl.dot(tl.trans(t_inv), d_v_new, input_precision=DOT)
        store_tile(dv_ptr, d_rhs_v * beta[:, None], row0, n_rows, H, h, V, v0, BL, BV)
        u = load_tile(u_ptr, row0, n_rows, H, h, V, v0, BL, BV)
        minus_d_A += tl.dot(d_rhs_v, tl.trans(u), input_precision=DOT)
        d_beta += tl.sum(d_rhs_v * load_tile(v_ptr, row0, n_rows, H, h, V, v0, BL, BV), 1)
    # 2'. the W half, then dA (strictly lower) and the keys through A = Diag(beta) (K K^T * Gamma)
    w = load_tile(w_ptr, row0, n_rows, H, h, K, 0, BL, BK)
    d_rhs_k = tl.dot(tl.trans(t_inv), d_w, input_precision=DOT)
    minus_d_A += tl.dot(d_rhs_k, tl.trans(w), input_precision=DOT)
    minus_d_A = tl.where(r[:, None] > r[None, :], minus_d_A, 0.0)
    gamma = row_decay(g_rows, BL)
    minus_d_kk = minus_d_A * gamma
    q = load_tile(q_ptr, t0, n_tok, H, h, K, 0, BC, BK) * scale
    k = load_tile(k_ptr, row0, n_rows, H, h, K, 0, BL, BK)
    kbeta = k * beta[:, None]
    e_in = tl.exp(b)
    e_out = tl.exp(b_out)
    e_read = tl.exp(b_tok)
    p, gamma_read = read_scores(q, k, g_tok, R, BL, BC, DOT)
    d_kbeta = d_rhs_k * e_in[:, None] - tl.dot(minus_d_kk, k, input_precision=DOT)
    d_qk = d_scores * gamma_read
    d_k = d_kbeta * beta[:, None] + d_k_out * e_out[:, None]
    d_k -= tl.dot(tl.trans(minus_d_kk), kbeta, input_precision=DOT)
    d_k += tl.dot(tl.trans(d_qk), q, input_precision=DOT)
    d_q = (d_q_in * e_read[:, None] + tl.dot(d_qk, k, input_precision=DOT)) * scale
    d_beta += tl.sum(d_kbeta * k, 1)
    store_tile(dq_ptr, d_q, t0, n_tok, H, h, K, 0, BC, BK)
    store_tile(dk_ptr, d_k, row0, n_rows, H, h, K, 0, BL, BK)
    tl.store(dbeta_ptr + (row0 + r) * H + h, d_beta, mask=r < n_rows)
    # 1'. the gate: dL/db over rows and over read rows (b_tok), then back through the cumsums
    if HAS_G:
        A = tl.dot(kbeta, tl.trans(k), input_precision=DOT) * gamma
        E = tl.where(r[:, None] > r[None, :], -A * minus_d_A, 0.0)      # dL/d(b_t - b_s) in A
        # and in P, but for s = token c's read row: exponent 0 whatever the gates, so no gradient;
        # left in, the term would cancel between d_b_tok and d_b (costing dg float32 digits, as
        # segsum.pair_grad explains)
        c = tl.arange(0, BC)
        E_read = tl.where(r[None, :] != (c * R + R - 1)[:, None], p * d_scores, 0.0)
        from_k_out = tl.sum(d_k_out * k * e_out[:, None], 1)
        d_b = tl.sum(E, 1) - tl.sum(E, 0) - tl.sum(E_read, 0) - from_k_out
        d_b += tl.sum(d_rhs_k * kbeta, 1) * e_in
        d_b += tl.where(r == BL - 1, tl.sum(from_k_out, 0) + tl.sum(from_decay, 0) * tl.exp(b_last), 0.0)
        d_b_tok = tl.sum(E_read, 1) + tl.sum(d_q_in * q * e_read[:, None], 1)
        d_rows = reverse_cumsum(d_b, BL)                                # gate rows are c * R
        d_g = reverse_cumsum(d_b_tok, BC)
        d_g += tl.sum(tl.where(r[None, :] == (c * R)[:, None], d_rows[None, :], 0.0), 1)
        tl.store(dg_ptr + (t0 + c) * H + h, d_g, mask=c < n_tok)
