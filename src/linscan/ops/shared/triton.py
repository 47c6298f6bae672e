"""Triton pieces shared by the chunkwise kernels of every family (decay, delta, mLSTM).

Conventions every kernel here (and its callers) follow:

- Tokens live on one flat axis: a dense batch ``[B, T, H, D]`` is viewed as
  ``B`` packed sequences ``[1, B * T, H, D]`` with ``cu_seqlens = [0, T, 2T, ...]``;
  a varlen batch is already packed. So one code path serves both.
- A :class:`ChunkLayout` cuts every sequence into chunks of ``C`` tokens (the
  last one of a sequence may be shorter); ``chunk_index[i] = (n, j)`` says that
  global chunk ``i`` is chunk ``j`` of sequence ``n``, and sequence ``n`` owns
  the global chunks ``chunk_offsets[n] .. chunk_offsets[n + 1] - 1``.
- Per-chunk tensors (writes, states) are ``[NT, H, K, V]`` float32, NT = total chunks.
- Log gates g are natural logs, ``<= 0``; ``b`` denotes their chunk-local
  cumulative sum (MATH.md section 1, step 1), float32, ``[T_total, H]`` (scalar
  gate) or ``[T_total, H, K]`` (diagonal gate); the decay of a whole chunk is
  ``exp(b)`` at its last token.
- Decays between two tokens of a chunk are sums of g over the tokens they span
  (``segment_sums``, ``gate_suffix``; ops/segsum.py), never differences b_t - b_s:
  after one strong decay (g = -1e4) b has lost the small g that follow it, and
  after g = -inf the difference is NaN. Prefixes b_t and the chunk total are
  sums already.

Contents, in the order the chunkwise algorithm uses them:

    ChunkLayout, dense_layout, varlen_layout     which tokens form each chunk
    chunk_bounds (jit)                           (sequence, first token, end) of a chunk, in a kernel
    tile, chunk_length, dot_precision            launch helpers
    load_rows, load_gate, exp_nonpositive (jit)  tile loads shared by the kernels
    segment_sums, gate_suffix (jit)              in-chunk log-decays as sums of g
    chunk_cumsum                                 1. chunk-local (reverse) cumulative sum of log gates
    state_passing                                2. X_{n+1} = exp(b_last,n) X_n + U_n across chunks
                                                    (forward: states; reverse: their gradients)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

GATE_NONE, GATE_SCALAR, GATE_DIAGONAL = 0, 1, 2


# ----------------------------------------------------------------------------- chunk layout

@dataclass(frozen=True)
class ChunkLayout:
    """How a flat token axis is cut into chunks.

    Attributes:
        cu_seqlens: int32 ``[N + 1]`` sequence offsets on the flat token axis.
        chunk_index: int32 ``[NT, 2]``: (sequence n, chunk j within n) of every global chunk.
        chunk_offsets: int32 ``[N + 1]``: first global chunk of every sequence.
        chunk_size: C (a power of two >= 16).
        num_chunks: NT; num_seqs: N; num_tokens: T_total.
    """

    cu_seqlens: torch.Tensor
    chunk_index: torch.Tensor
    chunk_offsets: torch.Tensor
    chunk_size: int
    num_chunks: int
    num_seqs: int
    num_tokens: int


def dense_layout(B: int, T: int, chunk_size: int, device) -> ChunkLayout:
    """Layout of a dense batch ``[B, T, ...]`` viewed as B packed sequences of T tokens (no host sync)."""
    per_seq = triton.cdiv(T, chunk_size)
    ar = torch.arange(B * per_seq, device=device, dtype=torch.int32)
    index = torch.stack([ar // per_seq, ar % per_seq], dim=1)              # (NT, 2)
    cu = torch.arange(B + 1, device=device, dtype=torch.int32) * T
    offsets = torch.arange(B + 1, device=device, dtype=torch.int32) * per_seq
    return ChunkLayout(cu, index.contiguous(), offsets, chunk_size, B * per_seq, B, B * T)


def varlen_layout(cu_seqlens: torch.Tensor, chunk_size: int) -> ChunkLayout:
    """Layout of a packed batch with FlashAttention offsets ``cu_seqlens`` ``[N + 1]`` (one host sync)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    counts = [triton.cdiv(n, chunk_size) for n in lengths]
    index = [(n, j) for n, c in enumerate(counts) for j in range(c)]
    device = cu_seqlens.device
    offsets = torch.tensor([0] + counts, device=device).cumsum(0).to(torch.int32)
    return ChunkLayout(cu_seqlens.to(torch.int32).contiguous(),
                       torch.tensor(index, dtype=torch.int32, device=device).view(-1, 2),
                       offsets, chunk_size, len(index), len(lengths), int(sum(lengths)))


@triton.jit
def chunk_bounds(cu_ptr, index_ptr, i, C: tl.constexpr):
    """Global chunk ``i`` -> (sequence n, first token, one past its last token) on the flat axis."""
    n = tl.load(index_ptr + 2 * i).to(tl.int32)
    j = tl.load(index_ptr + 2 * i + 1).to(tl.int32)
    bos = tl.load(cu_ptr + n).to(tl.int32)
    eos = tl.load(cu_ptr + n + 1).to(tl.int32)
    start = bos + j * C
    return n, start, tl.minimum(start + C, eos)


# ----------------------------------------------------------------------------- launch helpers

def tile(dim: int, cap: int = 64) -> int:
    """Tile length for a feature axis of size ``dim``: a power of two in [16, cap] (tl.dot needs >= 16)."""
    return max(16, min(cap, triton.next_power_of_2(dim)))


def chunk_length(chunk_size: int | None, default: int = 64, cap: int = 128) -> int:
    """The kernels' chunk length: ``chunk_size`` rounded up to a power of two in [16, cap].

    The chunk length changes only the order of the arithmetic, never the result.
    """
    return min(cap, max(16, triton.next_power_of_2(chunk_size or default)))


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact ("ieee") for float32 inputs, "tf32" for 16-bit inputs."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


# ----------------------------------------------------------------------------- 1. chunk-local cumsum

@triton.jit
def _chunk_cumsum_kernel(x_ptr, out_ptr, cu_ptr, index_ptr, H, D,
                         C: tl.constexpr, BD: tl.constexpr, REVERSE: tl.constexpr):
    """One (chunk, head, D tile): out[t] = sum of x over the chunk up to t (from t to the end if REVERSE)."""
    i, h, d0 = tl.program_id(0), tl.program_id(1), tl.program_id(2) * BD
    _, start, end = chunk_bounds(cu_ptr, index_ptr, i, C)
    rows = start + tl.arange(0, C)
    cols = d0 + tl.arange(0, BD)
    offs = (rows[:, None] * H + h) * D + cols[None, :]
    mask = (rows[:, None] < end) & (cols[None, :] < D)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, tl.cumsum(x, axis=0, reverse=REVERSE), mask=mask)


def chunk_cumsum(x: torch.Tensor, layout: ChunkLayout, *, reverse: bool = False) -> torch.Tensor:
    """Chunk-local cumulative sum along the token axis, in float32.

    Args:
        x: ``[T_total, H]`` or ``[T_total, H, D]`` (e.g. log gates; any float dtype).
        layout: the chunks (:func:`dense_layout` / :func:`varlen_layout`).
        reverse: sum from each token to the end of its chunk instead (the backward of the forward sum).
    Returns:
        float32 tensor of x's shape.
    """
    x = x.contiguous()
    T_total, H = x.shape[:2]
    D = x.shape[2] if x.dim() == 3 else 1
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    BD = tile(D, 64) if D > 1 else 1
    grid = (layout.num_chunks, H, triton.cdiv(D, BD))
    _chunk_cumsum_kernel[grid](x, out, layout.cu_seqlens, layout.chunk_index, H, D,
                               C=layout.chunk_size, BD=BD, REVERSE=reverse)
    return out


# ----------------------------------------------------------------------------- 2. state passing

@triton.jit
def _state_passing_kernel(u_ptr, b_ptr, x0_ptr, states_ptr, final_ptr, cu_ptr, offsets_ptr,
                          H, K, V, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                          GATE: tl.constexpr, REVERSE: tl.constexpr, HAS_X0: tl.constexpr,
                          STORE_FINAL: tl.constexpr):
    """One (sequence * head, K x V tile): run X <- exp(b_last) X + U over the sequence's chunks."""
    nh, pid = tl.program_id(0), tl.program_id(1)
    n, h = nh // H, nh % H
    k0 = (pid // tl.cdiv(V, BV)) * BK
    v0 = (pid % tl.cdiv(V, BV)) * BV
    rk, rv = k0 + tl.arange(0, BK), v0 + tl.arange(0, BV)
    mask = (rk[:, None] < K) & (rv[None, :] < V)
    kv = rk[:, None] * V + rv[None, :]
    bos = tl.load(cu_ptr + n).to(tl.int32)
    eos = tl.load(cu_ptr + n + 1).to(tl.int32)
    first = tl.load(offsets_ptr + n).to(tl.int32)
    count = tl.load(offsets_ptr + n + 1).to(tl.int32) - first
    x = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_X0:
        x = tl.load(x0_ptr + nh * K * V + kv, mask=mask, other=0.0).to(tl.float32)
    for step in range(count):
        if REVERSE:
            j = count - 1 - step
        else:
            j = step
        c = ((first + j) * H + h).to(tl.int64) * K * V
        tl.store(states_ptr + c + kv, x, mask=mask)
        last = tl.minimum(bos + (j + 1) * C, eos) - 1
        if GATE == 1:
            x *= tl.exp(tl.load(b_ptr + last * H + h))
        if GATE == 2:
            x *= tl.exp(tl.load(b_ptr + (last * H + h) * K + rk, mask=rk < K, other=0.0))[:, None]
        x += tl.load(u_ptr + c + kv, mask=mask, other=0.0)
    if STORE_FINAL:
        tl.store(final_ptr + nh * K * V + kv, x, mask=mask)


def state_passing(u: torch.Tensor, b: torch.Tensor | None, layout: ChunkLayout, *,
                  x0: torch.Tensor | None = None, reverse: bool = False,
                  store_final: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sequential pass over chunks (MATH.md section 1, step 3), per sequence and head.

    Forward (``reverse=False``), chunk by chunk n = 0, 1, ...:
        states[n] = X;   X <- Diag(exp(b_last(n))) X + u[n]       (X starts at x0 or 0)
    so ``states[n]`` is the state entering chunk n and the returned final X leaves the sequence.
    Reverse (the backward), n = last .. 0, same update: ``states[n]`` is then the gradient of
    the state *leaving* chunk n (x0 = gradient of the final state) and the final X is the
    gradient of the initial state.

    Args:
        u: ``[NT, H, K, V]`` float32 per-chunk writes (or, reversed, per-chunk gradient terms).
        b: None (no decay), ``[T_total, H]`` or ``[T_total, H, K]`` float32 chunk-local
            cumulative log gate; chunk n decays by ``exp(b)`` at its last token.
        layout: the chunks; x0: ``[N, H, K, V]`` or None (zeros).
        store_final: also return the final X ``[N, H, K, V]`` float32 (else None).
    Returns:
        ``(states [NT, H, K, V] float32, final or None)``.
    """
    NT, H, K, V = u.shape
    N = layout.num_seqs
    u = u.contiguous()
    states = torch.empty_like(u)
    final = torch.empty(N, H, K, V, dtype=torch.float32, device=u.device) if store_final else states
    gate = GATE_NONE if b is None else (GATE_DIAGONAL if b.dim() == 3 else GATE_SCALAR)
    BK, BV = tile(K, 32), tile(V, 32)
    grid = (N * H, triton.cdiv(K, BK) * triton.cdiv(V, BV))
    _state_passing_kernel[grid](
        u, u if b is None else b.contiguous(), u if x0 is None else x0.contiguous(), states, final,
        layout.cu_seqlens, layout.chunk_offsets, H, K, V, C=layout.chunk_size, BK=BK, BV=BV,
        GATE=gate, REVERSE=reverse, HAS_X0=x0 is not None, STORE_FINAL=store_final)
    return states, (final if store_final else None)


# ----------------------------------------------------------------------------- tile loads

@triton.jit
def load_rows(ptr, rows, end, h, H, D, cols):
    """float32 tile ``x[rows, h, cols]`` of a ``[T_total, H, D]`` tensor; zero where rows >= end or cols >= D."""
    offs = (rows[:, None].to(tl.int64) * H + h) * D + cols[None, :]
    mask = (rows[:, None] < end) & (cols[None, :] < D)
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_gate(g_ptr, rows, end, h, H, K, cols, GATE: tl.constexpr):
    """Log gate (or its chunk-local cumsum) at ``rows`` as a float32 tile that broadcasts against
    ``[R, BK]``: ``[R, BK]`` (diagonal gate ``[T_total, H, K]``), ``[R, 1]`` (scalar ``[T_total, H]``),
    zeros ``[R, 1]`` (no gate). Zero where rows >= end."""
    if GATE == 2:
        g = load_rows(g_ptr, rows, end, h, H, K, cols)
    elif GATE == 1:
        g = load_rows(g_ptr, rows, end, h, H, 1, tl.arange(0, 1))
    else:
        g = (rows[:, None] * 0).to(tl.float32)
    return g


@triton.jit
def exp_nonpositive(x):
    """exp(min(x, 0)): every exponent of the chunkwise forms is <= 0 mathematically; the clamp
    keeps masked (padding, non-causal) entries at <= 1 instead of inf (inf * 0 = nan)."""
    return tl.exp(tl.minimum(x, 0.0))


# ----------------------------------------------------------------------------- in-chunk log-decays

@triton.jit
def segment_sums(g, C: tl.constexpr):
    """``[t, s] = g_{s+1} + ... + g_t`` for s < t, 0 for s >= t, from ``g [C]``: the log-decays
    between the tokens of a chunk (ops/segsum.py ``decay_matrix``). The sums run down the columns of
    ``[r, s] = g_r (r > s)``: terms of one sign, so no cancellation (and -inf stays -inf, no NaN).
    O(C^2) adds per call, against the O(C^2 K) of the scores they weight."""
    o = tl.arange(0, C)
    return tl.cumsum(tl.where(o[:, None] > o[None, :], g[:, None], 0.0), axis=0)


@triton.jit
def gate_suffix(g_ptr, rows, stop, h, H, K, cols, GATE: tl.constexpr):
    """``g_{s+1} + ... + g_{stop-1}`` at every s of the consecutive ``rows``: the log-decay from
    token s to token stop - 1 (stop = end: to the chunk's last token), a reverse cumulative sum of
    g shifted by one token (``b_last - b`` would cancel). 0 where s >= stop - 1. Broadcasts like
    :func:`load_gate`; ``stop`` must not pass the chunk's end."""
    return tl.cumsum(load_gate(g_ptr, rows + 1, stop, h, H, K, cols, GATE), axis=0, reverse=True)
