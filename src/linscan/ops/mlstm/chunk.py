"""Chunkwise-parallel mLSTM in PyTorch (MATH.md section 3), differentiable.

TFLA form: the state (C, n, m) is materialised only at chunk boundaries, every
chunk then computes its outputs in parallel, matrix products doing the work.

Inside a chunk let b_t = sum of lf up to t and L_ts = (b_t - b_s) + li_s, the
log-weight of write s in the state at t. Entering with (C', m'):

    m_t = max(b_t + m', max_{s <= t} L_ts)          (exp gate; m = 0 for the sigmoid gate)
    C_t = e^{b_t + m' - m_t} C' + sum_{s <= t} e^{L_ts - m_t} k_s v_s^T

which is the recurrence unrolled, m_t included, so every exponent is <= 0
whatever the gates. b_t - b_s is a segment sum (the sum of lf over (s, t]),
never the difference of two cumulative sums: after a strong forget gate
those are large and their difference would lose float32 digits.

    1. b = cumsum(lf), L, a_t = max_s L_ts (all chunks at once)
    2. max-state at the chunk boundaries:  m_{n+1} = max(b_C + m_n, a_C)      (scan over N)
    3. writes  W_n = sum_s e^{L_Cs - m_{n+1}} k_s v_s^T  (and k_s for n), then
       C_{n+1} = e^{b_C + m_n - m_{n+1}} C_n + W_n                             (scan over N)
    4. m_t; outputs  O = ((Q K^T) * e^{L - m_t}) V + (Q e^{b + m_n - m_t}) C_n  (and q . n alike)
    5. readout  h = num / (max(|q . n|, e^{-m}) + eps),  or e^m num

Three scans over the N chunks (m, C, n) are the only sequential part; each is
one autograd node with a plain loop forward and backward.

Tokens that pad T to a multiple of the chunk (and the sequences of a varlen
batch to a common length) carry lf = 0 and li = -inf: no forgetting, no write,
no change of m, so each final state is exactly that of its last real token.
(Padding f = +inf, i = -inf before the gates would do the same, but then the
exactness rests on logsigmoid(+inf) == 0.) li = -inf only ever enters as
e^{-inf - finite} = 0 or as the losing side of a max, so values and gradients
stay free of NaN, even for chunks made only of padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import varlen
from ..dtypes import compute_dtype, upcast
from ..registry import register
from ..segments import run_segments, segment_length
from ..state_scan import chunk_state_scan
from .step import check_input_gate, log_gates, mlstm_step, readout, start_state

DEFAULT_CHUNK = 64
SEGMENT_TOKENS = 4096       # long inputs run as segments of whole chunks (ops/segments.py)


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
        C = chunk_size or DEFAULT_CHUNK
        o, state = run_segments(lambda *xs: _chunked(*xs, C, scale=K ** -0.5, **options),
                                (qc, kc, vc, li, lf), state, segment_length(C, SEGMENT_TOKENS))
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
    a = logw.max(dim=-1).values if stabilise else None             # (B, H, N, C)
    b_last = b[..., -1]                                            # (B, H, N)

    # 2. the max-state entering and leaving every chunk: m <- max(b_C + m, a_C), a scan over N
    if stabilise:
        m_in, m = _max_state(b_last, a[..., -1], m)                # (B, H, N), (B, H)
    else:
        m_in = torch.zeros_like(b_last)
    m_out = torch.cat([m_in[..., 1:], m[..., None]], dim=-1)       # (B, H, N): m after each chunk

    # 3. chunk writes, already stabilised by m_out, and the memory entering every chunk
    kw = k * _per_row((logw[..., -1, :] - m_out[..., None]).exp(), k)   # (B, H, N, C, K), weights <= 1
    writes, writes_n = kw.transpose(-1, -2) @ v, kw.sum(dim=-2)    # (B, H, N, K, V), (B, H, N, K)
    keep = (b_last + m_in - m_out).exp()                           # (B, H, N), <= 1
    mem_in, mem = chunk_state_scan(keep, writes, mem)                   # (B, H, N, K, V), (B, H, K, V)
    norm_in, norm = chunk_state_scan(keep, writes_n, norm)              # (B, H, N, K), (B, H, K)

    # 4. per-token max-state; intra-chunk and inter-chunk terms. The query scale multiplies
    #    every weight, so ln(scale) joins the exponents instead of costing a pass over q. It joins
    #    after m_t is taken off: the largest exponent then is exactly 0 (m_t is one of them), not
    #    rounded at the size of m (float32 digits lost for large gates). -m_t is added: the
    #    backward of a subtraction negates a full-size gradient.
    m_in = m_in[..., None]                                         # (B, H, N, 1)
    m_t = torch.maximum(b + m_in, a) if stabilise else torch.zeros_like(b)   # (B, H, N, C)
    log_scale = math.log(scale)
    scores = (q @ k.transpose(-1, -2)) * (logw + _per_row(-m_t, logw)).add_(log_scale).exp_()  # (B, H, N, C, C)
    q_in = q * _per_row((b + m_in - m_t + log_scale).exp(), q)     # (B, H, N, C, K)
    num = scores @ v + q_in @ mem_in                               # (B, H, N, C, V)
    qn = scores.sum(dim=-1) + (q_in @ norm_in[..., None])[..., 0]  # (B, H, N, C)

    # 5. normalised (or de-stabilised) readout
    h = readout(num, qn, m_t, normalize=normalize, eps=eps)        # (B, H, N, C, V)
    h = h.flatten(2, 3)[:, :, :T].transpose(1, 2)                  # (B, T, H, V)
    return h, (mem, norm, m)


def _per_row(x, like):
    """x (..., C) expanded to like's (..., C, D): written out because CPU kernels run an
    explicitly expanded operand about 3x faster than the implicit broadcast of a trailing 1."""
    return x[..., None].expand_as(like)


def _max_state(b, a, m):
    """m entering each chunk, (B, H, N), and after the last, for m' = max(b_n + m, a_n).

    The max picks one side per chunk; with that choice fixed the recurrence is linear,
    m' = [b wins] m + (b_n or a_n), and runs through the same scan as the memory
    (the same values, gradients routed to the winning side as torch.maximum does).
    """
    with torch.no_grad():
        m_prev, m_run = [], m
        for b_n, a_n in zip(b.unbind(-1), a.unbind(-1)):
            m_prev.append(m_run)
            m_run = torch.maximum(b_n + m_run, a_n)
        pick_a = ~(a <= b + torch.stack(m_prev, dim=-1))           # (B, H, N); NaN in a propagates
    return chunk_state_scan((~pick_a).to(b.dtype), torch.where(pick_a, a, b), m)


def _log_weights(lf, li):
    """(..., C) -> (..., C, C): L_ts = li_s + the sum of lf over (s, t] for s <= t, -inf above the diagonal.

    The segment sums run down the columns of [r, s] = lf_r (r > s) else 0 (a cumulative
    sum and a masked fill, not products with triangular masks, so inf and NaN stay causal);
    li joins afterwards, so the rounding of the sums follows their own (small) size.
    """
    C = lf.shape[-1]
    above = torch.ones(C, C, dtype=torch.bool, device=lf.device).triu(1)
    segsum = lf[..., :, None].expand(*lf.shape, C).tril(-1).cumsum(dim=-2)
    return segsum.add_(li[..., None, :]).masked_fill_(above, float("-inf"))


def _to_chunks(x, N, C, value=0.0):
    """(B, T, H, *) -> (B, H, N, C, *), contiguous, padded at the end of T with ``value``."""
    x = x.transpose(1, 2)                                          # (B, H, T, *)
    if N * C > x.shape[2]:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, N * C - x.shape[2]), value=value)
    return x.contiguous().unflatten(2, (N, C))
