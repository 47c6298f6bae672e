"""Chunkwise-parallel mLSTM in PyTorch (MATH.md section 3), differentiable.

TFLA form: the state (C, n, m) is materialised only at chunk boundaries, every
chunk then computes its outputs in parallel. n rides along as an extra value
column of ones (v -> [v, 1] turns C into [C | n]), so one matrix product gives
both the numerator C^T q and the normaliser q . n.

Inside a chunk let b_t = sum of lf up to t and L_ts = (b_t - b_s) + li_s, the
log-weight of write s in the state at t. Entering with (C', m'):

    m_t = max(b_t + m', max_{s <= t} L_ts)          (exp gate; m = 0 for the sigmoid gate)
    C_t = e^{b_t + m' - m_t} C' + sum_{s <= t} e^{L_ts - m_t} k_s v_s^T

which is the recurrence unrolled, m_t included, so every exponent is <= 0
whatever the gates. b_t - b_s is a segment sum (the sum of lf over (s, t]),
never the difference of two cumulative sums: after a strong forget gate
those are large and their difference would lose float32 digits.

    1. b = cumsum(lf), L, a_t = max_s L_ts (all chunks at once)
    2. chunk writes   W_n = sum_s e^{L_Cs - r_n} k_s [v_s, 1]^T,   r_n = a_C
    3. boundary states, chunk by chunk:  m <- max(b_C + m, r_n);  C <- e^{b_C + m_old - m} C + e^{r_n - m} W_n
       (two scans with scalar coefficients, each one autograd node)
    4. m_t; outputs  O = ((Q K^T) * e^{L - m_t}) [V, 1] + (Q e^{b + m' - m_t}) C'
    5. readout  h = num / (max(|q . n|, e^{-m}) + eps),  or e^m num

Tokens that pad T to a multiple of the chunk (and the sequences of a varlen
batch to a common length) carry lf = 0 and li = -inf: no forgetting, no write,
no change of m, so each final state is exactly that of its last real token
(padding f = +inf, i = -inf before the gates would serve too, but lf = 0 is
exact without relying on logsigmoid(inf)). The only exponent that could then
read -inf - (-inf) is r_n of an all-padding chunk; r_n cancels from every
product, so it is detached and clamped to a finite value, which keeps values
and gradients free of NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import varlen
from ..dtypes import compute_dtype, upcast
from ..registry import register
from .step import check_input_gate, log_gates, mlstm_step, readout, start_state

DEFAULT_CHUNK = 64


@register("mlstm", "chunk")
def mlstm_chunk(q, k, v, i, f, *, input_gate="exp", normalize=True, initial_state=None,
                output_final_state=False, cu_seqlens=None, chunk_size=None, eps=1e-6):
    """Chunkwise backend; same contract as :func:`linscan.ops.mlstm_scan`."""
    stabilise = check_input_gate(input_gate)
    dtype = compute_dtype(q)
    K, V = q.shape[-1], v.shape[-1]
    qc, kc, vc = upcast(q, k, v, dtype=dtype)
    li, lf = log_gates(i, f, input_gate, dtype)                    # (B, T, H)
    if cu_seqlens is not None:
        # one row per sequence (N, T_max, ...), padded with state-neutral tokens
        qc, kc, vc, lf = (varlen.pad(x, cu_seqlens) for x in (qc, kc, vc, lf))
        li = varlen.pad(li, cu_seqlens, float("-inf"))
    B, T, H, _ = qc.shape
    state = start_state(initial_state, (B, H, K, V), stabilise=stabilise, dtype=dtype, device=q.device)
    options = dict(stabilise=stabilise, normalize=normalize, eps=eps)
    if T == 1:
        o, state = mlstm_step(qc[:, 0] * K ** -0.5, kc[:, 0], vc[:, 0], li[:, 0], lf[:, 0], state, **options)
        o = o[:, None]
    else:
        o, state = _chunked(qc, kc, vc, li, lf, state, chunk_size or DEFAULT_CHUNK, scale=K ** -0.5, **options)
    if cu_seqlens is not None:
        o = varlen.unpad(o, cu_seqlens)
    return o.to(q.dtype), (state if output_final_state else None)


def _chunked(q, k, v, li, lf, state, C, *, scale, stabilise, normalize, eps):
    """q, k: [B, T, H, K]; v: [B, T, H, V]; li, lf: [B, T, H]; state (C, n, m); q^ = scale * q."""
    T = q.shape[1]
    N = -(-T // C)
    mem, norm, m = state
    q, k, v = (_to_chunks(x, N, C) for x in (q, k, v))             # (B, H, N, C, *)
    lf = _to_chunks(lf, N, C)                                      # (B, H, N, C), pad: lf = 0
    li = _to_chunks(li, N, C, value=float("-inf"))                 # pad: li = -inf

    # 1. cumulative and segment log-forget; log-weights L_ts of write s at t; their row max a_t
    b = lf.cumsum(dim=-1)                                          # (B, H, N, C)
    logw = _log_weights(lf, li)                                    # (B, H, N, C, C), -inf for s > t
    a = logw.amax(dim=-1) if stabilise else None                   # (B, H, N, C)
    b_last = b[..., -1]                                            # (B, H, N)
    a_last = a[..., -1] if stabilise else torch.zeros_like(b_last)

    # 2. chunk writes relative to r_n (cancels below: detached, finite for all-padding chunks)
    ref = a_last.detach().clamp_min(torch.finfo(b.dtype).min)      # (B, H, N)
    kw = k * (logw[..., -1, :] - ref[..., None]).exp()[..., None]  # (B, H, N, C, K), weights <= 1
    writes, writes_n = kw.transpose(-1, -2) @ v, kw.sum(dim=-2)    # (B, H, N, K, V), (B, H, N, K)

    # 3. the max-state and the memory entering every chunk: scans over N (the only sequential part)
    if stabilise:
        m_in, m = _max_state(b_last, a_last, m)                    # (B, H, N), (B, H)
    else:
        m_in = torch.zeros_like(b_last)
    m_out = torch.cat([m_in[..., 1:], m[..., None]], dim=-1)       # (B, H, N): m after each chunk
    keep, add = (b_last + m_in - m_out).exp(), (ref - m_out).exp()  # (B, H, N), both <= 1
    mem_in, mem = _Scan.apply(keep, add[..., None, None] * writes, mem)       # (B, H, N, K, V)
    norm_in, norm = _Scan.apply(keep, add[..., None] * writes_n, norm)        # (B, H, N, K)

    # 4. per-token max-state; intra-chunk and inter-chunk terms. The query scale multiplies
    #    every weight, so it joins the exponents (ln scale) instead of costing a pass over q.
    m_in = m_in[..., None]                                         # (B, H, N, 1)
    m_t = torch.maximum(b + m_in, a) if stabilise else torch.zeros_like(b)   # (B, H, N, C)
    m_s = m_t - math.log(scale)
    scores = (q @ k.transpose(-1, -2)) * (logw - m_s[..., None]).exp_()      # (B, H, N, C, C)
    q_in = q * (b + m_in - m_s).exp()[..., None]                   # (B, H, N, C, K)
    num = scores @ v + q_in @ mem_in                               # (B, H, N, C, V)
    qn = scores.sum(dim=-1) + (q_in @ norm_in[..., None])[..., 0]  # (B, H, N, C)

    # 5. normalised (or de-stabilised) readout
    h = readout(num, qn, m_t, normalize=normalize, eps=eps)        # (B, H, N, C, V)
    h = h.flatten(2, 3)[:, :, :T].transpose(1, 2)                  # (B, T, H, V)
    return h, (mem, norm, m)


def _max_state(b, a, m):
    """m entering each chunk, (B, H, N), and after the last, for m' = max(b_n + m, a_n).

    The max picks one side per chunk; with that choice fixed the recurrence is linear,
    m' = [b wins] m + (b_n or a_n), and runs through the same scan as the memory
    (the same values, gradients routed to the winning side as torch.maximum does).
    """
    with torch.no_grad():
        pick_a, m_run = [], m
        for b_n, a_n in zip(b.unbind(-1), a.unbind(-1)):
            pick_a.append(~(a_n <= b_n + m_run))                   # NaN in a propagates
            m_run = torch.where(pick_a[-1], a_n, b_n + m_run)
        pick_a = torch.stack(pick_a, dim=-1)                       # (B, H, N)
    return _Scan.apply((~pick_a).to(b.dtype), torch.where(pick_a, a, b), m)


class _Scan(torch.autograd.Function):
    """x_{n+1} = alpha_n x_n + u_n over axis 2; returns every x_n entering (n < N) and x_N.

    alpha: (B, H, N); u: (B, H, N, *D); x0: (B, H, *D). One autograd node with a plain
    loop each way (one fused op per step), instead of a graph of N small nodes per op.
    """

    @staticmethod
    def forward(ctx, alpha, u, x):
        alpha = alpha.view(*alpha.shape, *[1] * (u.dim() - 3))     # broadcast over *D
        entering = []
        for alpha_n, u_n in zip(alpha.unbind(2), u.unbind(2)):
            entering.append(x)
            x = torch.addcmul(u_n, alpha_n, x)
        entering = torch.stack(entering, dim=2)                    # (B, H, N, *D)
        ctx.save_for_backward(alpha, entering)
        return entering, x

    @staticmethod
    def backward(ctx, d_entering, d_x):
        alpha, entering = ctx.saved_tensors
        d_after = []                                               # dL/dx_{n+1}, reverse order
        for alpha_n, d_n in zip(reversed(alpha.unbind(2)), reversed(d_entering.unbind(2))):
            d_after.append(d_x)
            d_x = torch.addcmul(d_n, alpha_n, d_x)
        d_after = torch.stack(d_after[::-1], dim=2)                # (B, H, N, *D)
        d_alpha = (d_after * entering).reshape(*entering.shape[:3], -1).sum(-1)   # (B, H, N)
        return d_alpha, d_after, d_x                               # grads of alpha, u, x0


def _log_weights(lf, li):
    """(..., C) -> (..., C, C): L_ts = li_s + the sum of lf over (s, t] for s <= t, -inf above the diagonal.

    The segment sums run down the columns of [r, s] = lf_r (r > s), 0 (r <= s); li joins
    afterwards, so the rounding of the sums follows their own (small) size.
    """
    C = lf.shape[-1]
    causal = torch.ones(C, C, dtype=torch.bool, device=lf.device).tril()
    segsum = torch.where(causal.tril(-1), lf[..., :, None], 0.0).cumsum(dim=-2)
    return torch.where(causal, segsum.add_(li[..., None, :]), float("-inf"))


def _to_chunks(x, N, C, value=0.0):
    """(B, T, H, *) -> (B, H, N, C, *), contiguous, padded at the end of T with ``value``."""
    x = x.transpose(1, 2)                                          # (B, H, T, *)
    x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, N * C - x.shape[2]), value=value)
    return x.contiguous().unflatten(2, (N, C))
