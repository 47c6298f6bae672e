"""Triton building blocks shared by the mLSTM kernels: tile loads and the gate algebra of one chunk.

Layouts (all contiguous), following ops/shared/triton.py: tokens live on one flat axis (a dense
batch [B, T, ...] is B packed sequences of T tokens), cut into NT chunks of C tokens per sequence
(``ChunkLayout``: global chunk i is chunk j of sequence n and spans tokens [start, end)).

    token tensors  q, k ``[T_total, H, K]``; v, h, dh ``[T_total, H, V]``
    per-token scalars (log gates, m_t, ...) ``[H, NT * C]``: C slots per chunk, the slots past a
        sequence's end padded with lf = 0, li = -inf (no forgetting, no write)
    per-chunk values ``[NT, H, ...]``: m_in ``[NT, H]``, C ``[NT, H, K, V]``, n ``[NT, H, K]``
    per-sequence states ``[N, H, ...]``

Inside a chunk, with b_t the chunk-local cumulative sum of lf and m_in the max-state entering
the chunk (MATH.md section 3, ops/mlstm/chunk.py):

    L_ts = sum(lf over (s, t]) + li_s  (s <= t)    log-weight of write s in the state at token t
    a_t  = max_s L_ts,   m_t = max(b_t + m_in, a_t)      (exp gate; m = 0 for the sigmoid gate)
    w_s  = sum(lf over (s, C]) + li_s                    log-weight of write s in the state leaving
    m_out = max(b_C + m_in, max_s w_s)                   (= m_t of the chunk's last token)

so every exponent below is <= 0 whatever the gates.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_rows(ptr, start, end, h, H: tl.constexpr, D: tl.constexpr, o_d, BT: tl.constexpr):
    """Rows start .. start + BT of a ``[T_total, H, D]`` tensor at head h and columns ``o_d``:
    ``[BT, len(o_d)]`` in the tensor's dtype, 0 at rows >= end."""
    t = start + tl.arange(0, BT)
    offs = (t[:, None].to(tl.int64) * H + h) * D + o_d[None, :]
    return tl.load(ptr + offs, mask=(t[:, None] < end) & (o_d[None, :] < D), other=0.0)


@triton.jit
def store_rows(ptr, x, start, end, h, H: tl.constexpr, D: tl.constexpr, o_d, BT: tl.constexpr):
    """Store ``x [BT, len(o_d)]`` into rows start .. min(start + BT, end) of a ``[T_total, H, D]`` tensor."""
    t = start + tl.arange(0, BT)
    offs = (t[:, None].to(tl.int64) * H + h) * D + o_d[None, :]
    tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=(t[:, None] < end) & (o_d[None, :] < D))


@triton.jit
def state_offsets(idx, K: tl.constexpr, V: tl.constexpr, o_k, o_v):
    """Offsets and mask of the ``[len(o_k), len(o_v)]`` tile of matrix ``idx`` in a ``[..., K, V]`` stack."""
    offs = idx.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    return offs, (o_k[:, None] < K) & (o_v[None, :] < V)


@triton.jit
def state_program(cu_ptr, offsets_ptr, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr):
    """The (sequence, head, K tile, V tile) of a state-pass program (grid: N*H, K tiles x V tiles).

    Returns ``(i_nh, i_kv, i_v, h, bos, eos, first, count, o_k, o_v, offs, mask)``: tokens [bos, eos) of the
    sequence, its chunks first .. first + count - 1, the tile's rows/columns and state offsets."""
    i_nh, i_kv = tl.program_id(0), tl.program_id(1)
    i_k, i_v = i_kv // tl.cdiv(V, BV), i_kv % tl.cdiv(V, BV)
    n, h = i_nh // H, i_nh % H
    bos, eos = tl.load(cu_ptr + n).to(tl.int32), tl.load(cu_ptr + n + 1).to(tl.int32)
    first = tl.load(offsets_ptr + n).to(tl.int32)
    count = tl.load(offsets_ptr + n + 1).to(tl.int32) - first
    o_k, o_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    offs, mask = state_offsets(i_nh, K, V, o_k, o_v)
    return i_nh, i_kv, i_v, h, bos, eos, first, count, o_k, o_v, offs, mask


@triton.jit
def dot_left(a, b, SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b for float32 ``a`` and ``b`` in the operand dtype (bf16/fp16/fp32).

    With SPLIT (16-bit operands), a enters as hi + lo, two products in b's dtype that carry
    ~16 (bf16) / ~22 (fp16) bits of a's mantissa: as accurate as float32 at twice the tensor-core
    work. Without, a is rounded to b's dtype once (error ~ that dtype's rounding). fp16 tops out
    at 65504, so there a is first scaled to max |a| = 1 (states and 1/normaliser weights exceed it).
    """
    scale = 1.0
    if b.dtype == tl.float16:
        scale = tl.maximum(tl.max(tl.abs(a)), 1e-30)
        a = a / scale
    hi = a.to(b.dtype)
    acc = tl.dot(hi, b, input_precision=PRECISION)
    if SPLIT:
        acc += tl.dot((a - hi.to(tl.float32)).to(b.dtype), b, input_precision=PRECISION)
    return acc * scale


@triton.jit
def dot_right(a, b, SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b for ``a`` in the operand dtype and float32 ``b`` (see :func:`dot_left`)."""
    scale = 1.0
    if a.dtype == tl.float16:
        scale = tl.maximum(tl.max(tl.abs(b)), 1e-30)
        b = b / scale
    hi = b.to(a.dtype)
    acc = tl.dot(a, hi, input_precision=PRECISION)
    if SPLIT:
        acc += tl.dot(a, (b - hi.to(tl.float32)).to(a.dtype), input_precision=PRECISION)
    return acc * scale


@triton.jit
def load_token_scalars(ptr, h, i, TP, BT: tl.constexpr):
    """The ``[BT]`` per-token scalars of chunk ``i`` at head ``h`` from an ``[H, TP]`` tensor (TP = NT * C)."""
    return tl.load(ptr + h.to(tl.int64) * TP + i.to(tl.int64) * BT + tl.arange(0, BT))


@triton.jit
def store_token_scalars(ptr, x, h, i, TP, BT: tl.constexpr):
    """Store ``[BT]`` per-token scalars of chunk ``i`` at head ``h`` into an ``[H, TP]`` tensor."""
    tl.store(ptr + h.to(tl.int64) * TP + i.to(tl.int64) * BT + tl.arange(0, BT), x)


@triton.jit
def last(x, BT: tl.constexpr):
    """The last entry of a ``[BT]`` vector (exactly, not a recomputation)."""
    return tl.sum(tl.where(tl.arange(0, BT) == BT - 1, x, 0.0), axis=0)


@triton.jit
def log_weights(lf, li, BT: tl.constexpr):
    """``L [BT, BT]``: L_ts = (sum of lf over (s, t]) + li_s for s <= t, -inf above the diagonal.

    The sums are segment sums (column-wise cumulative sums of [r, s] = lf_r for r > s), never
    b_t - b_s: after strong forget gates b is large and the difference would lose float32 digits.
    """
    o = tl.arange(0, BT)
    seg = tl.cumsum(tl.where(o[:, None] > o[None, :], lf[:, None], 0.0), axis=0)
    return tl.where(o[:, None] >= o[None, :], seg + li[None, :], float("-inf"))


@triton.jit
def write_log_weights(lf_ptr, li, h, i, TP, BT: tl.constexpr):
    """w_s ``[BT]`` = (sum of lf over (s, C]) + li_s: the log-weight of write s at the chunk's end.

    A reverse cumulative sum of lf shifted by one token (a segment sum, as in ``log_weights``).
    """
    o = tl.arange(0, BT)
    lf_next = tl.load(lf_ptr + h.to(tl.int64) * TP + i.to(tl.int64) * BT + o + 1, mask=o + 1 < BT, other=0.0)
    return tl.cumsum(lf_next, axis=0, reverse=True) + li


@triton.jit
def token_max_state(b, logw, m_in, STABILISE: tl.constexpr):
    """m_t ``[BT]`` = max(b_t + m_in, max_s L_ts) for the exp gate, 0 for the sigmoid gate."""
    if STABILISE:
        m_t = tl.maximum(b + m_in, tl.max(logw, axis=1))
    else:
        m_t = tl.zeros_like(b)                        # not b * 0: b is -inf after a full forget
    return m_t


@triton.jit
def chunk_transition(b, w, m_in, BT: tl.constexpr, STABILISE: tl.constexpr):
    """``(keep, u, m_out)`` of the state update C_out = keep * C_in + sum_s u_s k_s v_s^T.

    keep = e^{b_C + m_in - m_out} (scalar), u_s = e^{w_s - m_out} ``[BT]``, both <= 1.
    """
    b_last = last(b, BT)
    if STABILISE:
        m_out = tl.maximum(b_last + m_in, tl.max(w, axis=0))
    else:
        m_out = m_in
    return tl.exp(b_last + m_in - m_out), tl.exp(w - m_out), m_out
