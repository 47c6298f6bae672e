"""Triton backend of ``linear_scan`` for diagonal A (MATH.md section 4); blocks and dense A use ``chunk``.

One program owns a [B row, BLOCK_D channels] strip and walks T in tiles of
BLOCK_T positions:

    1. load the tile's (a_t, b_t)                      (reversed index order when ``reverse``)
    2. within the tile, a parallel prefix (``tl.associative_scan``) of the pairs
           (a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2)
       gives P_t = a_t ... a_1 and x_t = the tile's own scan from a zero state
    3. h_t = x_t + P_t s, where s is the state entering the tile; the tile's last h is the next s

The backward is the chunk backend's adjoint (one reverse scan with the next
position's A), run by this same kernel; float64 inputs go to the ``chunk`` backend.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk import Scan, scan_chunk
from .structure import canonical

BLOCK_T = 64


@triton.jit
def _combine(a1, b1, a2, b2):
    return a2 * a1, a2 * b1 + b2


@triton.jit
def _scan_kernel(a_ptr, b_ptr, h0_ptr, h_ptr, T, D, HAS_H0: tl.constexpr, REVERSE: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    row, blk = tl.program_id(0), tl.program_id(1)
    d = blk * BLOCK_D + tl.arange(0, BLOCK_D)                              # (BLOCK_D,)
    d_ok = d < D
    base = row * T * D
    if HAS_H0:
        s = tl.load(h0_ptr + row * D + d, mask=d_ok, other=0.0).to(tl.float32)
    else:
        s = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, T, BLOCK_T):
        # 1. the tile, in scan order
        i = start + tl.arange(0, BLOCK_T)                                  # (BLOCK_T,)
        t = (T - 1 - i) if REVERSE else i
        ok = (i < T)[:, None] & d_ok[None, :]
        offs = base + t[:, None] * D + d[None, :]                          # (BLOCK_T, BLOCK_D)
        a = tl.load(a_ptr + offs, mask=ok, other=1.0).to(tl.float32)
        b = tl.load(b_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        # 2. prefix products and the tile's scan from zero
        P, x = tl.associative_scan((a, b), axis=0, combine_fn=_combine)
        # 3. carry the entering state through
        h = x + P * s[None, :]
        tl.store(h_ptr + offs, h, mask=ok)
        s = tl.sum(tl.where((i == tl.minimum(start + BLOCK_T, T) - 1)[:, None], h, 0.0), axis=0)


def _engine(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """Diagonal scan: a, b (B, T, D) float32 contiguous, h0 (B, D) or None -> h (B, T, D) float32."""
    B, T, D = b.shape
    a, b = a.contiguous(), b.contiguous()
    h = torch.empty_like(b)
    block_d = min(64, triton.next_power_of_2(D))
    grid = (B, triton.cdiv(D, block_d))
    _scan_kernel[grid](a, b, h0.contiguous() if h0 is not None else b, h, T, D, HAS_H0=h0 is not None,
                       REVERSE=reverse, BLOCK_T=BLOCK_T, BLOCK_D=block_d)
    return h


def scan_triton(a, b, h0=None, *, reverse=False, chunk_size=None):
    """Triton backend; same contract as :func:`linscan.ops.linear_scan` (``chunk_size`` is ignored).

    Diagonal A ``[B, T, D]`` in float32/bf16/fp16 runs the kernel (state and output
    accumulated in float32, returned in b's dtype); block-diagonal and dense A, and
    float64 inputs, are delegated to the ``chunk`` backend.
    """
    if a.dim() != 3 or b.dtype == torch.float64:
        return scan_chunk(a, b, h0, reverse=reverse, chunk_size=chunk_size)
    a_c, b_c, h0_c = canonical(a, b, h0, torch.float32)
    return Scan.apply(_engine, a_c, b_c, h0_c, reverse).to(b.dtype)
