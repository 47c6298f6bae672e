"""Chunkwise-parallel decay scan in PyTorch (MATH.md section 1), differentiable.

Inside a chunk of C tokens everything is a matrix product; only the
[B, H, K, V] state is carried from chunk to chunk:

    1. b = cumulative log-decay inside each chunk (b_C: the chunk total)
    2. intra-chunk output   O  = (A masked to s <= t) V,  A_ts = sum_k q_tk k_sk e^{b_tk - b_sk}
    3. chunk states         S_n = e^{b_C} S_{n-1} + (K e^{b_C - b})^T V
    4. inter-chunk output   O += (Q e^{b}) S_{n-1}

Every exponent is <= 0, so nothing overflows however strong the decay, and every
exponent is a sum of log-decays over the tokens it spans (b_t - b_s = g_{s+1} + ...
+ g_t, ops/segsum.py), never a difference of two cumulative sums: those cancel
after one strong decay (float32 accuracy lost) or g = -inf (NaN). The
diagonal-decay scores of step 2 take their segment sums on 16-token sub-blocks and
meet the earlier sub-blocks through a reference point (never a bare e^{-b}).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import varlen
from ..dtypes import compute_dtype, upcast
from ..registry import register
from ..segments import run_segments, segment_length
from ..segsum import segment_decay, suffix_sums
from ..state_scan import chunk_state_scan
from .step import decay_step, log_decays

DEFAULT_CHUNK = 64
SEGMENT_TOKENS = 4096       # long inputs run as segments of whole chunks (ops/segments.py)
SUB_BLOCK = 16


@register("decay", "chunk")
def decay_chunk(q, k, v, g=None, *, scale, initial_state=None, output_final_state=False,
                cu_seqlens=None, chunk_size=None):
    """Chunkwise backend; same contract as :func:`linscan.ops.decay_scan`."""
    B, T, H, K = q.shape
    if g is not None and g.dim() == 1:
        g = g.view(1, 1, H).expand(B, T, H)                     # (B, T, H)
    if cu_seqlens is not None:
        # zero keys and zero log-decay in the padding leave each final state untouched
        o, state = decay_chunk(*(varlen.pad(x, cu_seqlens) for x in (q, k, v, g)), scale=scale,
                               initial_state=initial_state, output_final_state=output_final_state,
                               chunk_size=chunk_size)
        return varlen.unpad(o, cu_seqlens), state

    dtype = compute_dtype(q)
    qc, kc, vc, gc = upcast(q, k, v, g, dtype=dtype)
    state = qc.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(dtype)
    if T == 1:
        o, state = decay_step(qc[:, 0] * scale, kc[:, 0], vc[:, 0], log_decays(gc, 1)[0], state)
        o = o[:, None]
    else:
        C = chunk_size or DEFAULT_CHUNK
        o, state = run_segments(lambda *xs: _chunked(*xs, C), (qc * scale, kc, vc, gc), state,
                                segment_length(C, SEGMENT_TOKENS))
    return o.to(q.dtype), (state if output_final_state else None)


def _chunked(q, k, v, g, state, C):
    """q, k: [B, T, H, K]; v: [B, T, H, V]; g: None | [B, T, H] | [B, T, H, K]; state: [B, H, K, V]."""
    B, T, H, _ = q.shape
    N = -(-T // C)
    # (B, T, H, *) -> (B, H, N, C, *), zero-padded to N * C tokens (no write, no decay)
    q, k, v = (_to_chunks(x, N, C) for x in (q, k, v))
    diagonal = g is not None and g.dim() == 4
    if g is not None:
        g = _to_chunks(g if diagonal else g[..., None], N, C)      # (B, H, N, C, K | 1)

    # 1. log-decays inside each chunk as sums, never differences of cumulative sums (ops/segsum.py):
    #    prefixes b_t, suffixes b_C - b_s and, for scalar decay, the segments b_t - b_s
    #    (diagonal decay: on sub-blocks, in step 2)
    if g is not None:
        b = g.cumsum(dim=-2)                                       # (B, H, N, C, K | 1)
        out_decay = suffix_sums(g, dim=-2).exp()                   # e^{b_C - b}   (B, H, N, C, K | 1)

    # 2. intra-chunk scores and outputs
    if g is None:
        scores = (q @ k.transpose(-1, -2)).tril()
    elif diagonal:
        scores = _diagonal_scores(q, k, g, _sub_block(C))
    else:
        scores = (q @ k.transpose(-1, -2)) * segment_decay(g[..., 0])   # e^{b_t - b_s}, s <= t
    o = scores @ v                                                 # (B, H, N, C, V)

    # 3. per-chunk writes, then the state entering every chunk (sequential over N only)
    if g is None:
        writes = k.transpose(-1, -2) @ v                           # (B, H, N, K, V)
        chunk_decay = writes.new_ones(writes.shape[:3])            # (B, H, N)
    else:
        writes = (k * out_decay).transpose(-1, -2) @ v             # (B, H, N, K, V)
        chunk_decay = b[..., -1, :].exp()                          # (B, H, N, K | 1)
        chunk_decay = chunk_decay if diagonal else chunk_decay[..., 0]
    entering, state = chunk_state_scan(chunk_decay, writes, state)  # (B, H, N, K, V), (B, H, K, V)

    # 4. inter-chunk outputs from the entering states
    q_in = q if g is None else q * b.exp()
    o = o + q_in @ entering
    o = o.flatten(2, 3)[:, :, :T].transpose(1, 2)                  # (B, T, H, V)
    return o, state


def _to_chunks(x, N, C):
    """(B, T, H, D) -> (B, H, N, C, D), zero-padded at the end."""
    if N * C != x.shape[1]:
        x = F.pad(x, (0, 0, 0, 0, 0, N * C - x.shape[1]))
    return x.transpose(1, 2).unflatten(2, (N, C))


def _sub_block(C):
    """The largest divisor of C that is at most SUB_BLOCK."""
    return next(s for s in range(min(C, SUB_BLOCK), 0, -1) if C % s == 0)


def _diagonal_scores(q, k, g, S):
    """A_ts = sum_k q_tk k_sk e^{b_tk - b_sk} for s <= t, else 0, without overflow or cancellation.

    q, k, g: (..., C, K) with C = M * S. Sub-blocks on the diagonal take the segment decays of
    their own tokens ((..., M, K, S, S), not (..., C, C, K)). Row block i > 0 meets the earlier
    columns through the reference r = last token of block i - 1: e^{b_t - b_s} = e^{b_t - b_r}
    e^{b_r - b_s}, the first from the prefix of t in its block, the second from the suffix of s
    in its block j times the decay over the whole blocks j+1 .. i-1. Every factor is <= 1.
    """
    *lead, C, K = q.shape
    M = C // S
    qs, ks, gs = (x.unflatten(-2, (M, S)) for x in (q, k, g))         # (..., M, S, K)
    inner = segment_decay(gs.transpose(-1, -2))                        # (..., M, K, S, S)
    blocks = (qs.transpose(-1, -2)[..., :, None] * inner * ks.transpose(-1, -2)[..., None, :]).sum(-3)
    eye = torch.eye(M, dtype=q.dtype, device=q.device)
    scores = (blocks[..., :, :, None, :] * eye[:, None, :, None]).reshape(*lead, C, C)
    if M == 1:
        return scores
    q_rows = qs[..., 1:, :, :] * gs[..., 1:, :, :].cumsum(dim=-2).exp()   # e^{b_t - b_r}   (..., M-1, S, K)
    across = segment_decay(gs.sum(dim=-2).transpose(-1, -2))[..., :-1, :]  # blocks (j, i-1]   (..., K, M-1, M)
    to_end = ks * suffix_sums(gs, dim=-2).exp()                        # k_s e^{b_end(j) - b_s}   (..., M, S, K)
    k_cols = to_end[..., None, :, :, :] * across.movedim(-3, -1)[..., None, :]   # (..., M-1, M, S, K)
    below = q_rows @ k_cols.flatten(-3, -2).transpose(-1, -2)          # (..., M-1, S, C)
    below = torch.cat([below.new_zeros(*lead, 1, S, C), below], dim=-3).reshape(*lead, C, C)
    return scores + below
