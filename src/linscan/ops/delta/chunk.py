"""Chunkwise-parallel delta rule in PyTorch (MATH.md section 2, WY / UT form), differentiable.

Inside a chunk of L Householder rows the recurrence collapses to one unit-lower
triangular solve; only the [B, H, K, V] state is carried from chunk to chunk:

    1. b = cumulative log-decay inside each chunk; Gamma_ts = exp(b_t - b_s), s <= t
    2. UT transform   (I + A) [U | W] = Diag(beta) [V | K e^b],
                      A = strictly_lower(Diag(beta) (K K^T * Gamma))
    3. chunk states   V_new = U - W S_{n-1};   S_n = e^{b_L} S_{n-1} + (K e^{b_L - b})^T V_new
    4. outputs        O = (Q e^b) S_{n-1} + ((Q K^T) * Gamma) V_new

Steps 1, 2 and 4 run batched over all chunks; only the two small products of
step 3 run in the loop over chunks. The backward is written by hand in the same
shape (one reverse loop of two small products, everything else batched), which
saves the per-chunk autograd nodes and most of the passes over the L x L
matrices. Every exponent is <= 0, so nothing overflows however strong the
decay, and every exponent is a sum of log-decays over the rows it spans
(b_t - b_s = g_{s+1} + ... + g_t, ops/segsum.py), never a difference of two
cumulative sums: those cancel after one strong decay (float32 accuracy lost) or
g = -inf (NaN). Long inputs run as segments of chunks that carry the state, so
that no temporary grows past SEGMENT_ELEMENTS.

DeltaProduct (R Householder steps per token) is the plain delta rule over the
interleaved sequence of T * R rows, with each token's gate on its first row and
its query read after its last row; a chunk of C tokens holds L = C * R rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import varlen
from ..dtypes import compute_dtype, upcast
from ..registry import register
from ..segsum import cumsum_grad, decay_matrix, pair_grad
from .step import delta_step, householder_axis

DEFAULT_ROWS = 64          # Householder rows per chunk by default: C = DEFAULT_ROWS // R tokens
SEGMENT_ELEMENTS = 2 ** 22  # bound on the elements of one temporary: chunks run in segments under it


@register("delta", "chunk")
def delta_chunk(q, k, v, beta, g=None, *, scale, initial_state=None, output_final_state=False,
                cu_seqlens=None, chunk_size=None):
    """Chunkwise backend; same contract as :func:`linscan.ops.delta_scan`."""
    if cu_seqlens is not None:
        # zero keys, betas and log-decays in the padding leave each final state untouched
        o, state = delta_chunk(*(varlen.pad(x, cu_seqlens) for x in (q, k, v, beta, g)), scale=scale,
                               initial_state=initial_state, output_final_state=output_final_state,
                               chunk_size=chunk_size)
        return varlen.unpad(o, cu_seqlens), state

    dtype = compute_dtype(q)
    k, v, beta = householder_axis(k, v, beta)                     # (B, T, R, H, *)
    qc, kc, vc, bc, gc = upcast(q, k, v, beta, g, dtype=dtype)
    B, T, R, H, K = k.shape
    state = qc.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(dtype)
    if T == 1:
        o, state = delta_step(qc[:, 0] * scale, kc[:, 0], vc[:, 0], bc[:, 0],
                              None if gc is None else gc[:, 0], state)
        o = o[:, None]
    else:
        C = chunk_size or max(1, DEFAULT_ROWS // R)
        o, state = _chunked(qc * scale, kc, vc, bc, gc, state, C)
    return o.to(q.dtype), (state if output_final_state else None)


def _chunked(q, k, v, beta, g, state, C):
    """q: [B, T, H, K]; k: [B, T, R, H, K]; v: [B, T, R, H, V]; beta: [B, T, R, H];
    g: None | [B, T, H]; state: [B, H, K, V]; C tokens (L = C * R rows) per chunk.

    Chunks are laid out (N, B * H, rows, D) so that chunk n is one contiguous batch of matrices.
    """
    B, T, R, H, K = k.shape
    N = -(-T // C)
    # (B, T, R, H, *) -> (N, B*H, L, *): zero-padded to N * C tokens (no write, no decay), interleaved
    k, v = (_to_chunks(_pad_time(x, N * C).flatten(1, 2), N) for x in (k, v))
    beta = _to_chunks(_pad_time(beta, N * C).flatten(1, 2)[..., None], N)[..., 0]    # (N, BH, L)
    q = _to_chunks(_pad_time(q, N * C), N)                        # (N, BH, C, K)
    if g is not None:
        # the gate sits on each token's first row (log-decay 0 on the others)
        rows = F.pad(_pad_time(g, N * C)[:, :, None], (0, 0, 0, R - 1)).flatten(1, 2)  # (B, T'R, H)
        g = _to_chunks(rows[..., None], N)[..., 0]                # (N, BH, L)
    # long inputs run as segments of M chunks carrying the state: this bounds every temporary (the
    # L x L matrices above all), which keeps them in cache and out of the allocator's page-fault path
    L = k.shape[-2]
    M = max(1, SEGMENT_ELEMENTS // (B * H * L * max(L, K, v.shape[-1])))
    segments = [[None] * -(-N // M) if x is None else x.split(M) for x in (q, k, v, beta, g)]
    state = state.flatten(0, 1)                                   # (BH, K, V)
    outs = []
    for q_s, k_s, v_s, beta_s, g_s in zip(*segments):
        o_s, state = _DeltaChunks.apply(q_s, k_s, v_s, beta_s, g_s, state, R)
        outs.append(o_s)
    o = torch.cat(outs) if len(outs) > 1 else outs[0]             # (N, BH, C, V)
    o = o.unflatten(1, (B, H)).permute(1, 0, 3, 2, 4).flatten(1, 2)[:, :T]   # (B, T, H, V)
    return o, state.unflatten(0, (B, H))


class _DeltaChunks(torch.autograd.Function):
    """Steps 1-4 of the module docstring on chunked tensors, with a hand-written backward.

    q: (N, G, C, K) scaled queries; k: (N, G, L, K); v: (N, G, L, V); beta: (N, G, L);
    g: None | (N, G, L) log-decay per row; state: (G, K, V); R rows per token.
    Returns o (N, G, C, V) and the final state (G, K, V). Temporaries are updated in place
    where they can be, to allocate fewer fresh L x L buffers.
    """

    @staticmethod
    def forward(ctx, q, k, v, beta, g, state, R):
        read = slice(R - 1, None, R)                              # the row after which a token is read
        # 1. decay between rows as sums of log-decays (a plain causal mask without a gate)
        b = None if g is None else g.cumsum(-1)                   # (N, G, L)
        gamma = _causal(k.shape[-2], q.dtype, q.device) if g is None else decay_matrix(g)  # (N, G, L, L)
        e_in, e_read, e_out, decay = _gates(b, gamma, R)
        # 2. UT transform: (I + A)^{-1} explicitly, since a solve against the identity is cheaper
        #    than one against [V | K] for small batched matrices, and the backward needs no solve
        kbeta = _rows(k, beta)                                    # (N, G, L, K)
        A = kbeta @ k.mT                                          # beta_t k_t.k_s   (N, G, L, L)
        if b is not None:
            A *= gamma                                            # only the strictly lower part is read
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
        T_inv = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)   # (N, G, L, L)
        V = v.shape[-1]
        rhs = v.new_empty(*v.shape[:-1], V + k.shape[-1])         # Diag(beta) [V | K e^b]
        torch.mul(v, beta[..., None], out=rhs[..., :V])
        torch.mul(kbeta, 1 if e_in is None else e_in[..., None], out=rhs[..., V:])
        X = T_inv @ rhs                                           # [U | W]
        U, W = X[..., :V], X[..., V:]                             # (N, G, L, V), (N, G, L, K)
        # 3. the state entering every chunk (sequential over N only)
        k_out = _rows(k, e_out)                                   # K e^{b_L - b}   (N, G, L, K)
        entering = q.new_empty(*U.shape[:2], *state.shape[-2:])   # (N, G, K, V)
        v_new = torch.empty_like(U)                               # (N, G, L, V)
        for n in range(len(U)):
            entering[n] = state
            torch.baddbmm(U[n], W[n], state, alpha=-1, out=v_new[n])
            state = torch.baddbmm(state if decay is None else state * decay[n], k_out[n].mT, v_new[n])
        # 4. outputs, read after each token's last row
        q_in = _rows(q, e_read)                                   # Q e^b   (N, G, C, K)
        P = (q @ k.mT).mul_(gamma[..., read, :])                 # (Q K^T) * Gamma   (N, G, C, L)
        o = _addmm_(q_in @ entering, P, v_new)                    # (N, G, C, V)
        ctx.R = R
        A = None if b is None else A                              # the backward reads it for the gate only
        ctx.save_for_backward(q, k, v, beta, b, gamma, kbeta, A, T_inv, P, X, v_new, entering, k_out, q_in)
        return o, state

    @staticmethod
    @once_differentiable
    def backward(ctx, d_o, d_state):
        q, k, v, beta, b, gamma, kbeta, A, T_inv, P, X, v_new, entering, k_out, q_in = ctx.saved_tensors
        R, V = ctx.R, v.shape[-1]
        read = slice(R - 1, None, R)
        e_in, e_read, e_out, decay = _gates(b, gamma, R)
        W = X[..., V:]
        d_o = d_o.contiguous()                                    # it arrives permuted; four products read it
        # 4. outputs: the parts that do not need the state's gradient
        d_scores = d_o @ v_new.mT                                 # dL/dP   (N, G, C, L)
        d_q_in = d_o @ entering.mT                                # (N, G, C, K)
        d_v_new = P.mT @ d_o                                      # (N, G, L, V), completed in the loop
        from_o = q_in.mT @ d_o                                    # (N, G, K, V)
        # 3. reverse state loop; d_exit[n] is the gradient of the state leaving chunk n
        d_exit = torch.empty_like(entering)
        ds = d_state
        for n in reversed(range(len(W))):
            d_exit[n] = ds
            d_v_new[n].baddbmm_(k_out[n], ds)
            ds = torch.baddbmm(from_o[n] + (ds if decay is None else ds * decay[n]), W[n].mT, d_v_new[n],
                               alpha=-1)
        d_k_out = v_new @ d_exit.mT                               # (N, G, L, K)
        # 2. UT transform: [dU | dW] back through the inverse; minus_d_A = -dL/dA
        d_rhs = T_inv.mT @ torch.cat([d_v_new, (d_v_new @ entering.mT).neg_()], -1)
        minus_d_A = (d_rhs @ X.mT).tril_(-1)                      # (N, G, L, L)
        d_rhs_v, d_rhs_k = d_rhs[..., :V], d_rhs[..., V:]
        d_g = None
        if b is not None and ctx.needs_input_grad[4]:
            E = (A * minus_d_A).neg_()                            # dL/d(b_t - b_s) through A = kk * Gamma
            E[..., read, :] += P * d_scores                       # and through P = (Q K^T) * Gamma
            from_decay = _dot(entering.flatten(-2), d_exit.flatten(-2)) * decay[..., 0, 0]   # (N, G)
            d_b = _log_decay_grad(E, e_in, R, from_rhs=_dot(d_rhs_k, kbeta), from_q=_dot(d_q_in, q_in),
                                  from_k_out=_dot(d_k_out, k_out), from_decay=from_decay)
            d_g = cumsum_grad(d_b)                                # b = cumsum(g)
        minus_d_kk = minus_d_A if b is None else minus_d_A.mul_(gamma)
        d_kbeta = _addmm_(_rows(d_rhs_k, e_in, copy=True), minus_d_kk, k, alpha=-1)
        d_qk = d_scores.mul_(gamma[..., read, :])
        d_k = _rows(d_kbeta, beta).add_(_rows(d_k_out, e_out))
        d_k = _addmm_(_addmm_(d_k, minus_d_kk.mT, kbeta, alpha=-1), d_qk.mT, q)
        d_q = _addmm_(_rows(d_q_in, e_read, copy=True), d_qk, k)
        d_beta = _dot(d_rhs_v, v) + _dot(d_kbeta, k)
        return d_q, d_k, _rows(d_rhs_v, beta), d_beta, d_g, ds, None     # None: R is not a tensor


def _log_decay_grad(E, e_in, R, *, from_rhs, from_q, from_k_out, from_decay):
    """Step 1 backward: dL/db for the cumulative log-decay b (N, G, L), from every place it entered.

    E: dL/d(b_t - b_s) inside Gamma (N, G, L, L); e_in = e^b. The others are summed over K or V already:
    from_rhs = sum dL/d(rhs_K) * beta k (rhs_K = beta k e^b), from_q = sum dL/d(Q e^b) * Q e^b
    (read rows), from_k_out = sum dL/d(K e^{b_L - b}) * K e^{b_L - b}, from_decay for e^{b_L} (N, G).
    """
    d_b = pair_grad(E) + from_rhs * e_in - from_k_out
    d_b[..., R - 1::R] += from_q
    d_b[..., -1] += from_k_out.sum(-1) + from_decay
    return d_b


def _addmm_(acc, x, y, alpha=1):
    """acc += alpha * x @ y in place on (N, G, ...) tensors (acc contiguous), one batched BLAS call."""
    acc.flatten(0, 1).baddbmm_(x.flatten(0, 1), y.flatten(0, 1), alpha=alpha)
    return acc


def _dot(x, y):
    """Row-wise dot products over the last axis (no product buffer, unlike (x * y).sum(-1))."""
    return torch.einsum("...d,...d->...", x, y)


def _gates(b, gamma, R):
    """e^b (N, G, L), its read rows (N, G, C), e^{b_L - b} (N, G, L: the last row of Gamma, a sum
    of log-decays, not the difference) and the chunk decay e^{b_L} (N, G, 1, 1); all None without a gate."""
    if b is None:
        return None, None, None, None
    e_in = b.exp()
    return e_in, e_in[..., R - 1::R], gamma[..., -1, :], e_in[..., -1:, None]


def _rows(x, w, *, copy=False):
    """x (..., rows, D) with each row scaled by w (..., rows); x itself when w is None (a
    contiguous copy of it with ``copy``, to be updated in place)."""
    if w is None:
        return x.clone(memory_format=torch.contiguous_format) if copy else x
    return x * w[..., None]


def _pad_time(x, length):
    """Zero-pad axis 1 (time) of ``x`` to ``length``."""
    if x.shape[1] == length:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, length - x.shape[1]))


def _to_chunks(x, N):
    """(B, N * L, H, D) -> (N, B * H, L, D), contiguous."""
    B, _, H, D = x.shape
    return x.unflatten(1, (N, -1)).permute(1, 0, 3, 2, 4).reshape(N, B * H, -1, D)


def _causal(L, dtype, device):
    return torch.ones(L, L, dtype=dtype, device=device).tril()
