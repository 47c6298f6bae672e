"""Triton forward kernels of the delta family (MATH.md section 2), and the tile helpers they share
with the backward (``triton_bwd.py``).

Layout. Every sequence is a run of tokens in one packed axis (a dense batch [B, T] is packed as
B sequences of T tokens), and DeltaProduct's R Householder steps are R consecutive *rows*:
k ``[TT * R, H, K]``, v ``[TT * R, H, V]``, beta ``[TT * R, H]``; q ``[TT, H, K]`` and the gate
g ``[TT, H]`` are per token. A chunk is C tokens = L = C * R rows; its tile has BL >= L rows (the
padding rows load as zeros: no write, no decay). Inside a chunk (row r, token c, read row c*R+R-1):

    1. b = cumsum of the gate over rows (each token's gate on its first row); b_tok = b at read rows
    2. A = strictly_lower(Diag(beta) (K K^T * Gamma)),  Gamma_ts = exp(b_t - b_s) (s <= t)
       T_inv = (I + A)^{-1} (forward substitution),  W = T_inv (K beta e^b),  U = T_inv (V beta)
    3. V_new = U - W S;   S' = e^{b_L} S + (K e^{b_L - b})^T V_new          (sequential over chunks)
    4. O = (Q e^{b_tok}) S + ((Q K^T) * Gamma_read) V_new

Every exponent between two rows (b_t - b_s in Gamma and Gamma_read, b_L - b) is a sum of the
gates over the rows it spans, never a difference of cumulative sums (ops/segsum.py): after one
strong decay (g = -1e4) b has absorbed the small gates that follow it, and after g = -inf the
difference is NaN. Extra work against that form, per chunk: the segment sums of ``row_decay`` and
``read_scores`` (a cumulative sum over a [BL, BL] / [BC, BL] tile: O(BL^2) adds, against the
O(BL^2 K) of the products they weight) and the suffix sums b_out (one [BL] reverse cumulative sum).

Kernels: ``_prep_kernel`` (steps 1-2, grid chunks x H), ``_state_kernel`` (step 3, grid V tiles x
sequences * H, a loop over the chunks), ``_output_kernel`` (step 4, grid V tiles x chunks x H).
Every exponent is a sum of gates <= 0, so no decay overflows.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..shared.triton import chunk_bounds, segment_sums

# The matrix that is inverted is always built in full fp32 (the triangular solve amplifies its
# errors when beta approaches 2); every other product uses the DOT precision the launcher picks:
# "ieee" for float32 inputs; for 16-bit inputs "tf32" in the output and gradient kernels and
# "tf32x3" in those whose products feed the float32 states (prep, state, reverse state).
EXACT = tl.constexpr("ieee")


# ---------------------------------------------------------------- tile helpers (shared with bwd)

@triton.jit
def chunk_tokens(cu_ptr, index_ptr, pid, C: tl.constexpr):
    """First token (int64) and number of tokens (<= C) of global chunk ``pid``."""
    _, start, end = chunk_bounds(cu_ptr, index_ptr, pid, C)
    return start.to(tl.int64), (end - start).to(tl.int64)


@triton.jit
def load_tile(ptr, row0, n_rows, H, h, D, col0, BR: tl.constexpr, BD: tl.constexpr):
    """[BR, BD] float32 tile of a [rows, H, D] tensor at head h: rows row0 + [0, n_rows), columns
    col0 + [0, BD) below D; zeros elsewhere."""
    r = tl.arange(0, BR)
    d = col0 + tl.arange(0, BD)
    offs = ((row0 + r)[:, None] * H + h) * D + d[None, :]
    mask = (r[:, None] < n_rows) & (d[None, :] < D)
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_tile(ptr, x, row0, n_rows, H, h, D, col0, BR: tl.constexpr, BD: tl.constexpr):
    """Store the [BR, BD] tile ``x`` where :func:`load_tile` would read (cast to ptr's dtype)."""
    r = tl.arange(0, BR)
    d = col0 + tl.arange(0, BD)
    offs = ((row0 + r)[:, None] * H + h) * D + d[None, :]
    mask = (r[:, None] < n_rows) & (d[None, :] < D)
    tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_vector(ptr, row0, n_rows, H, h, BR: tl.constexpr):
    """[BR] float32 values of a [rows, H] tensor at head h (zeros past n_rows)."""
    r = tl.arange(0, BR)
    return tl.load(ptr + (row0 + r) * H + h, mask=r < n_rows, other=0.0).to(tl.float32)


@triton.jit
def state_offsets(index, H, h, K, V, col0, BK: tl.constexpr, BV: tl.constexpr):
    """Offsets and mask of the [BK, BV] tile (columns col0..) of state ``index`` in [*, H, K, V]."""
    kk = tl.arange(0, BK)
    vv = col0 + tl.arange(0, BV)
    offs = ((index.to(tl.int64) * H + h) * K + kk[:, None]) * V + vv[None, :]
    return offs, (kk[:, None] < K) & (vv[None, :] < V)


@triton.jit
def chunk_gates(g_ptr, t0, n_tok, H, h, R: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
                HAS_G: tl.constexpr):
    """Step 1, all zero without a gate: the gates g_rows [BL] (each token's on its first row) and
    g_tok [BC]; b [BL] (cumulative log-decay over rows), b_tok [BC] (b at each token's read row, i.e.
    the cumulative gate over tokens), b_out [BL] (b_L - b as a suffix sum: the gates of the rows after
    each row) and b_L (the chunk total)."""
    r = tl.arange(0, BL)
    c = tl.arange(0, BC)
    g_rows = tl.zeros([BL], dtype=tl.float32)
    g_tok = tl.zeros([BC], dtype=tl.float32)
    g_next = tl.zeros([BL], dtype=tl.float32)
    if HAS_G:
        first = (r % R == 0) & (r < n_tok * R)
        g_rows = tl.load(g_ptr + (t0 + r // R) * H + h, mask=first, other=0.0).to(tl.float32)
        g_tok = tl.load(g_ptr + (t0 + c) * H + h, mask=c < n_tok, other=0.0).to(tl.float32)
        nxt = ((r + 1) % R == 0) & (r + 1 < n_tok * R)                        # row r + 1 is a first row
        g_next = tl.load(g_ptr + (t0 + (r + 1) // R) * H + h, mask=nxt, other=0.0).to(tl.float32)
    b = tl.cumsum(g_rows, 0)
    b_tok = tl.cumsum(g_tok, 0)
    b_out = tl.cumsum(g_next, 0, reverse=True)
    b_last = tl.sum(tl.where(r == BL - 1, b, 0.0), 0)   # padding rows carry no gate: b[BL-1] = b_L
    return g_rows, g_tok, b, b_tok, b_out, b_last


@triton.jit
def row_decay(g_rows, BL: tl.constexpr):
    """Gamma [BL, BL]: exp(b_t - b_s) = exp(sum of g_rows over (s, t]) for s <= t, else 0."""
    r = tl.arange(0, BL)
    return tl.where(r[:, None] >= r[None, :], tl.exp(segment_sums(g_rows, BL)), 0.0)


@triton.jit
def read_scores(q, k, g_tok, R: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
                DOT: tl.constexpr):
    """Step 4's intra-chunk scores P = (Q K^T) * Gamma_read [BC, BL] and Gamma_read itself:
    token c sees rows s <= c*R + R - 1 with decay exp(b_tok_c - b_s), the gates of the tokens
    after row s's own up to c: a cumulative sum over tokens (rows of [u, s] = g_u for u > s // R)."""
    c = tl.arange(0, BC)
    s = tl.arange(0, BL)
    seen = s[None, :] <= (c * R + R - 1)[:, None]
    log_decay = tl.cumsum(tl.where(c[:, None] > (s // R)[None, :], g_tok[:, None], 0.0), axis=0)
    gamma = tl.where(seen, tl.exp(log_decay), 0.0)
    return tl.dot(q, tl.trans(k), input_precision=DOT) * gamma, gamma


@triton.jit
def unit_lower_inverse(A, BL: tl.constexpr):
    """(I + A)^{-1} for a strictly lower-triangular A [BL, BL], by forward substitution:
    row i of the inverse is e_i - sum_{j<i} A_ij (row j of the inverse)."""
    r = tl.arange(0, BL)
    inv = tl.where(r[:, None] == r[None, :], 1.0, 0.0)
    for i in range(1, BL):
        a_i = tl.sum(tl.where(r[:, None] == i, A, 0.0), 0)        # row i of A, over columns j
        t_i = tl.sum(a_i[:, None] * inv, 0)                        # sum_j A_ij inv[j, :]
        inv = tl.where(r[:, None] == i, inv - t_i[None, :], inv)
    return inv


# ---------------------------------------------------------------- kernels

@triton.jit
def _prep_kernel(k_ptr, v_ptr, beta_ptr, g_ptr, ti_ptr, w_ptr, u_ptr, cu_ptr, index_ptr,
                 H, K, V, C: tl.constexpr, R: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
                 BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr, DOT: tl.constexpr):
    """Steps 1-2 for one chunk and head: T_inv [BL, BL], W rows [L, K], U rows [L, V] (float32)."""
    pid, h = tl.program_id(0), tl.program_id(1)
    t0, n_tok = chunk_tokens(cu_ptr, index_ptr, pid, C)
    row0, n_rows = t0 * R, n_tok * R
    # 1. gates
    g_rows, _, b, _, _, _ = chunk_gates(g_ptr, t0, n_tok, H, h, R, BL, BC, HAS_G)
    # 2. UT transform
    k = load_tile(k_ptr, row0, n_rows, H, h, K, 0, BL, BK)
    beta = load_vector(beta_ptr, row0, n_rows, H, h, BL)
    r = tl.arange(0, BL)
    kk = tl.dot(k, tl.trans(k), input_precision=EXACT)
    A = tl.where(r[:, None] > r[None, :], beta[:, None] * kk * row_decay(g_rows, BL), 0.0)
    t_inv = unit_lower_inverse(A, BL)
    tl.store(ti_ptr + (pid.to(tl.int64) * H + h) * BL * BL + r[:, None] * BL + r[None, :], t_inv)
    w = tl.dot(t_inv, k * (beta * tl.exp(b))[:, None], input_precision=DOT)
    store_tile(w_ptr, w, row0, n_rows, H, h, K, 0, BL, BK)
    for v0 in range(0, V, BV):
        v = load_tile(v_ptr, row0, n_rows, H, h, V, v0, BL, BV)
        u = tl.dot(t_inv, v * beta[:, None], input_precision=DOT)
        store_tile(u_ptr, u, row0, n_rows, H, h, V, v0, BL, BV)


@triton.jit
def _state_kernel(k_ptr, g_ptr, w_ptr, u_ptr, h0_ptr, h_ptr, vnew_ptr, ht_ptr, cu_ptr, offsets_ptr,
                  H, K, V, C: tl.constexpr, R: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr, HAS_H0: tl.constexpr,
                  DOT: tl.constexpr):
    """Step 3 for one sequence, head and V tile: stores the state entering every chunk (h),
    V_new rows and the final state (ht)."""
    vt, ih = tl.program_id(0), tl.program_id(1)
    i, h = ih // H, ih % H
    v0 = vt * BV
    bos = tl.load(cu_ptr + i).to(tl.int64)
    eos = tl.load(cu_ptr + i + 1).to(tl.int64)
    first = tl.load(offsets_ptr + i).to(tl.int64)
    offs, mask = state_offsets(i, H, h, K, V, v0, BK, BV)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S = tl.load(h0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for j in range(0, tl.cdiv(eos - bos, C)):
        t0 = bos + j * C
        n_tok = tl.minimum(eos - t0, C)
        row0, n_rows = t0 * R, n_tok * R
        h_offs, _ = state_offsets(first + j, H, h, K, V, v0, BK, BV)
        tl.store(h_ptr + h_offs, S, mask=mask)
        _, _, _, _, b_out, b_last = chunk_gates(g_ptr, t0, n_tok, H, h, R, BL, BC, HAS_G)
        w = load_tile(w_ptr, row0, n_rows, H, h, K, 0, BL, BK)
        u = load_tile(u_ptr, row0, n_rows, H, h, V, v0, BL, BV)
        v_new = u - tl.dot(w, S, input_precision=DOT)
        store_tile(vnew_ptr, v_new, row0, n_rows, H, h, V, v0, BL, BV)
        k_out = load_tile(k_ptr, row0, n_rows, H, h, K, 0, BL, BK) * tl.exp(b_out)[:, None]
        S = S * tl.exp(b_last) + tl.dot(tl.trans(k_out), v_new, input_precision=DOT)
    tl.store(ht_ptr + offs, S, mask=mask)


@triton.jit
def read_chunk(q_ptr, k_ptr, g_ptr, cu_ptr, index_ptr, scale, H, K, C: tl.constexpr, R: tl.constexpr,
               BL: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr,
               DOT: tl.constexpr):
    """The program's chunk (grid: V tiles, chunks, heads) and its read-side scores: returns
    ``(pid, h, v0, t0, n_tok, row0, n_rows, q * scale, b_tok, P)`` (P as in ``read_scores``)."""
    vt, pid, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    v0 = vt * BV
    t0, n_tok = chunk_tokens(cu_ptr, index_ptr, pid, C)
    row0, n_rows = t0 * R, n_tok * R
    _, g_tok, _, b_tok, _, _ = chunk_gates(g_ptr, t0, n_tok, H, h, R, BL, BC, HAS_G)
    q = load_tile(q_ptr, t0, n_tok, H, h, K, 0, BC, BK) * scale
    k = load_tile(k_ptr, row0, n_rows, H, h, K, 0, BL, BK)
    p, _ = read_scores(q, k, g_tok, R, BL, BC, DOT)
    return pid, h, v0, t0, n_tok, row0, n_rows, q, b_tok, p


@triton.jit
def _output_kernel(q_ptr, k_ptr, g_ptr, h_ptr, vnew_ptr, o_ptr, cu_ptr, index_ptr, scale,
                   H, K, V, C: tl.constexpr, R: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr, DOT: tl.constexpr):
    """Step 4 for one V tile, chunk and head: O = (Q e^{b_tok}) S + P V_new, stored in o's dtype."""
    pid, h, v0, t0, n_tok, row0, n_rows, q, b_tok, p = read_chunk(q_ptr, k_ptr, g_ptr, cu_ptr, index_ptr, scale,
                                                                 H, K, C, R, BL, BC, BK, BV, HAS_G, DOT)
    offs, mask = state_offsets(pid, H, h, K, V, v0, BK, BV)
    S = tl.load(h_ptr + offs, mask=mask, other=0.0)
    v_new = load_tile(vnew_ptr, row0, n_rows, H, h, V, v0, BL, BV)
    o = tl.dot(q * tl.exp(b_tok)[:, None], S, input_precision=DOT)
    o += tl.dot(p, v_new, input_precision=DOT)
    store_tile(o_ptr, o, t0, n_tok, H, h, V, v0, BC, BV)
