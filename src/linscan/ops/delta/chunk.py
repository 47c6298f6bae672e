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
saves the per-chunk autograd nodes and most of the passes over the C x C
matrices. Every exponent is <= 0 (differences are masked to -inf before exp),
so nothing overflows however strong the decay.

DeltaProduct (R Householder steps per token) is the plain delta rule over the
interleaved sequence of T * R rows, with each token's gate on its first row and
its query read after its last row; a chunk of C tokens holds L = C * R rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import varlen
from ..dtypes import compute_dtype, upcast
from ..registry import register
from .step import delta_step, householder_axis

DEFAULT_ROWS = 64          # Householder rows per chunk by default: C = DEFAULT_ROWS // R tokens


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
    b = None
    if g is not None:
        # the gate sits on each token's first row; b = cumulative log-decay inside each chunk
        rows = F.pad(_pad_time(g, N * C)[:, :, None], (0, 0, 0, R - 1)).flatten(1, 2)  # (B, T'R, H)
        b = _to_chunks(rows[..., None], N)[..., 0].cumsum(-1)     # (N, BH, L)
    o, state = _DeltaChunks.apply(q, k, v, beta, b, state.flatten(0, 1), R)
    o = o.unflatten(1, (B, H)).permute(1, 0, 3, 2, 4).flatten(1, 2)[:, :T]   # (B, T, H, V)
    return o, state.unflatten(0, (B, H))


class _DeltaChunks(torch.autograd.Function):
    """Steps 1-4 of the module docstring on chunked tensors, with a hand-written backward.

    q: (N, G, C, K) scaled queries; k: (N, G, L, K); v: (N, G, L, V); beta: (N, G, L);
    b: None | (N, G, L) cumulative log-decay per chunk; state: (G, K, V); R rows per token.
    Returns o (N, G, C, V) and the final state (G, K, V).
    """

    @staticmethod
    def forward(ctx, q, k, v, beta, b, state, R):
        read = slice(R - 1, None, R)                              # the row after which a token is read
        # 1. decay between rows (a plain causal mask without a gate)
        gamma = _causal(k.shape[-2], q.dtype, q.device) if b is None else _segment_decay(b)  # (N, G, L, L)
        # 2. UT transform: one batched unit-lower triangular solve for all chunks
        kbeta = k * beta[..., None]                               # (N, G, L, K)
        A = kbeta @ k.mT                                          # beta_t k_t.k_s   (N, G, L, L)
        if b is not None:
            A *= gamma                                            # only the strictly lower part is read
        V = v.shape[-1]
        rhs = torch.empty(*v.shape[:-1], V + k.shape[-1], dtype=v.dtype, device=v.device)
        torch.mul(v, beta[..., None], out=rhs[..., :V])
        torch.mul(k, (beta if b is None else beta * b.exp())[..., None], out=rhs[..., V:])
        # (I + A)^{-1} explicitly: a solve against the identity is cheaper than against [V | K]
        # with small batched matrices, and the backward then needs a product, not a second solve
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
        T_inv = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)   # (N, G, L, L)
        X = T_inv @ rhs                                           # [U | W]
        U, W = X[..., :V], X[..., V:]                             # (N, G, L, V), (N, G, L, K)
        # 3. the state entering every chunk (sequential over N only)
        k_out, decay = _write_keys(k, b)                          # K e^{b_L - b}; e^{b_L} (N, G, 1, 1)
        entering = q.new_empty(*U.shape[:2], *state.shape[-2:])   # (N, G, K, V)
        v_new = torch.empty_like(U)                               # (N, G, L, V)
        for n in range(len(U)):
            entering[n] = state
            torch.baddbmm(U[n], W[n], state, alpha=-1, out=v_new[n])
            state = torch.baddbmm(state if decay is None else state * decay[n], k_out[n].mT, v_new[n])
        # 4. outputs, read after each token's last row
        P = (q @ k.mT).mul_(gamma[..., read, :])                 # (Q K^T) * Gamma   (N, G, C, L)
        o = _baddbmm(_read_gate(q, b, R) @ entering, P, v_new)    # (N, G, C, V)
        ctx.R = R
        ctx.save_for_backward(q, k, v, beta, b, gamma, kbeta, A, T_inv, P, X, v_new, entering)
        return o, state

    @staticmethod
    def backward(ctx, d_o, d_state):
        q, k, v, beta, b, gamma, kbeta, A, T_inv, P, X, v_new, entering = ctx.saved_tensors
        R, V = ctx.R, v.shape[-1]
        read = slice(R - 1, None, R)
        W = X[..., V:]
        k_out, decay = _write_keys(k, b)
        q_in = _read_gate(q, b, R)                                # Q e^b   (N, G, C, K)
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
        # 2. UT transform: [dU | dW] back through the solve; minus_d_A = -dL/dA
        d_rhs = T_inv.mT @ torch.cat([d_v_new, -(d_v_new @ entering.mT)], -1)
        minus_d_A = (d_rhs @ X.mT).tril_(-1)                      # (N, G, L, L)
        d_rhs_v, d_rhs_k = d_rhs[..., :V], d_rhs[..., V:]
        minus_d_kk = minus_d_A if b is None else minus_d_A * gamma
        d_kbeta = _baddbmm(d_rhs_k if b is None else d_rhs_k * b.exp()[..., None], minus_d_kk, k, alpha=-1)
        d_qk = d_scores * gamma[..., read, :]
        d_k = d_kbeta * beta[..., None] + (d_k_out if b is None else d_k_out * (b[..., -1:] - b).exp()[..., None])
        d_k = _baddbmm(_baddbmm(d_k, minus_d_kk.mT, kbeta, alpha=-1), d_qk.mT, q)
        d_q = _baddbmm(d_q_in if b is None else d_q_in * b[..., read].exp()[..., None], d_qk, k)
        d_v = d_rhs_v * beta[..., None]
        d_beta = (d_rhs_v * v).sum(-1) + (d_kbeta * k).sum(-1)
        d_b = None
        if b is not None:
            # 1. every place the cumulative log-decay entered; E = dL/d(b_t - b_s)
            E = (A * minus_d_A).neg_()                            # through A = (K K^T beta) * Gamma
            E[..., read, :] += P * d_scores                       # through P = (Q K^T) * Gamma
            d_b = E.sum(-1) - E.sum(-2) + (d_rhs_k * kbeta).sum(-1) * b.exp()   # Gamma, K e^b
            d_b[..., read] += (d_q_in * q_in).sum(-1)             # Q e^b
            c = (d_k_out * k_out).sum(-1)                         # K e^{b_L - b}
            d_b -= c
            d_b[..., -1] += c.sum(-1) + (entering * d_exit).sum((-1, -2)) * decay[..., 0, 0]   # e^{b_L}
        return d_q, d_k, d_v, d_beta, d_b, ds, None


def _baddbmm(acc, x, y, alpha=1):
    """acc + alpha * x @ y on (N, G, ...) tensors, as one batched BLAS call."""
    out = torch.baddbmm(acc.flatten(0, 1), x.flatten(0, 1), y.flatten(0, 1), alpha=alpha)
    return out.unflatten(0, acc.shape[:2])


def _read_gate(q, b, R):
    """Q e^b on the rows where tokens are read (q itself without a gate)."""
    return q if b is None else q * b[..., R - 1::R].exp()[..., None]


def _write_keys(k, b):
    """K e^{b_L - b} (N, G, L, K) and the chunk decay e^{b_L} (N, G, 1, 1), or (k, None) without a gate."""
    if b is None:
        return k, None
    b_last = b[..., -1:]                                          # (N, G, 1)
    return k * (b_last - b).exp()[..., None], b_last.exp()[..., None]


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


def _segment_decay(b):
    """exp(b_t - b_s) for s <= t, else 0.  b: (..., L) -> (..., L, L)."""
    L = b.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=b.device).tril()
    diff = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf"))
    return diff.exp()
