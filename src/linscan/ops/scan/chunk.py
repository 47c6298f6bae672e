"""Chunked parallel linear scan (MATH.md section 4), differentiable in O(T D) memory for diagonal A.

In the canonical layout of ``structure.py``, T is split into N chunks of C
positions (plus fewer than C leftover positions):

    1. local scan: inside every chunk, from a zero state, all N chunks at once
       (a loop over the C positions, batched over chunks and channels):
           x_c = A_c x_{c-1} + b_c,      P_c = A_c ... A_1   (prefix transition products)
    2. carries: the state entering chunk n, sequential over the N chunk summaries:
           s_1 = h0,      s_{n+1} = P_C^(n) s_n + x_C^(n)
    3. fix-up:  h_c^(n) = x_c^(n) + P_c^(n) s_n

C defaults to max(16, ceil(sqrt(T))): step 1 takes C Python-level steps and
step 2 takes N = T / C, so C + N is smallest at C = sqrt(T), while each step
of step 1 works on all N chunks at once. For block and dense A the prefix
products cost k^3 per position (k = D for dense) against k^2 for the plain
loop: the price of the parallel form, worth it for small blocks; for large
dense A on a CPU the naive loop can be faster.

The backward is the adjoint recurrence, itself a reverse linear scan with
transposed A run by the same engine, so nothing is unrolled:

    lambda_t = dL/dh_t + A_{t+1}^T lambda_{t+1}
    dL/db_t = lambda_t,   dL/dA_t = lambda_t h_{t-1}^T (elementwise for diagonal A),
    dL/dh0 = A_1^T lambda_1

A reverse scan runs the same steps in descending order (positions, chunks); its
chunks are aligned to the end of the sequence. Positions left over after the
whole chunks (fewer than C) continue sequentially from the last chunk's state,
so nothing is padded, and every step writes into preallocated outputs: for
diagonal A the forward reads a and b once and writes h and P once.
"""

from __future__ import annotations

import functools
import math

import torch

from ..dtypes import compute_dtype
from ..registry import register
from .structure import apply, canonical, compose, outer, transpose

MIN_CHUNK = 16


def default_chunk(T: int) -> int:
    """The chunk length used when none is given: max(16, ceil(sqrt(T)))."""
    return max(MIN_CHUNK, math.isqrt(T - 1) + 1 if T > 1 else 1)


@register("scan", "chunk")
def scan_chunk(a, b, h0=None, *, reverse=False, chunk_size=None):
    """Chunked backend; same contract as :func:`linscan.ops.linear_scan`."""
    a_c, b_c, h0_c = canonical(a, b, h0, compute_dtype(b))
    diag = a_c.dim() == b_c.dim()
    T = b.shape[1]
    if T == 1:
        # the decode step: one transition, no chunking (autograd handles the two ops);
        # a zero h0 still goes through A so that a gets its (zero) gradient as in the loop
        h0_c = torch.zeros_like(b_c[:, 0]) if h0_c is None else h0_c
        h = apply(a_c[:, 0], h0_c, diag) + b_c[:, 0]
        return h[:, None].flatten(2).to(b.dtype)                    # (B, 1, D)
    engine = functools.partial(_chunked, C=chunk_size or default_chunk(T))
    h = Scan.apply(engine, a_c, b_c, h0_c, reverse)
    return h.flatten(2).to(b.dtype)                                 # (B, T, D)


class Scan(torch.autograd.Function):
    """h_t = A_t h_{t-1} + b_t (or h_{t+1} when reverse) in the canonical layout; h0 None = zeros.

    ``engine(a, b, h0, reverse) -> h`` computes the scan (this module's chunked loop, or a
    kernel); the backward runs the adjoint on the same engine.
    """

    @staticmethod
    def forward(ctx, engine, a, b, h0, reverse):
        h = engine(a, b, h0, reverse=reverse)
        ctx.save_for_backward(a, h0, h)
        ctx.engine, ctx.reverse = engine, reverse
        return h

    @staticmethod
    def backward(ctx, dh):
        a, h0, h = ctx.saved_tensors
        diag, reverse = a.dim() == h.dim(), ctx.reverse
        # the adjoint runs the other way; its transition at t is A^T of the next position in
        # scan order. The wrapped-around entry meets the adjoint's zero start state.
        a_adj = transpose(a.roll(1 if reverse else -1, dims=1), diag)
        lam = Scan.apply(ctx.engine, a_adj, dh, None, not reverse)       # (B, T, *S)
        first = 0 if not reverse else -1                                 # the position h0 enters
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[1]:                                  # a
            h_in = torch.zeros_like(h[:, 0]) if h0 is None else h0       # (B, *S)
            before = [h_in[:, None], h[:, :-1]] if not reverse else [h[:, 1:], h_in[:, None]]
            grad_a = outer(lam, torch.cat(before, dim=1), diag)
        if h0 is not None and ctx.needs_input_grad[3]:
            grad_h0 = apply(transpose(a[:, first], diag), lam[:, first], diag)
        return None, grad_a, lam, grad_h0, None                        # engine, reverse: settings


def _chunked(a, b, h0, reverse, C):
    """a: (B, T, D) | (B, T, G, k, k); b: (B, T, D) | (B, T, G, k); h0: None | b[:, 0]'s shape."""
    diag = a.dim() == b.dim()
    T = b.shape[1]
    N, rest = divmod(T, C)
    body = slice(rest, T) if reverse else slice(0, N * C)            # whole chunks
    tail = slice(0, rest) if reverse else slice(N * C, T)             # leftover positions
    h = torch.empty(b.shape, dtype=b.dtype, device=b.device)          # (B, T, *S)
    s = torch.zeros_like(h[:, 0]) if h0 is None else h0               # (B, *S)
    if N > 0:
        a_n, b_n, h_n = (x[:, body].unflatten(1, (N, C)) for x in (a, b, h))   # (B, N, C, *)
        P = torch.empty(a_n.shape, dtype=a.dtype, device=a.device)

        # 1. local scan of every chunk from a zero state (h_n holds it), with the prefix
        #    transition products P; unbind: one view per position, no index op each
        a_c, b_c, h_c, P_c = (x.unbind(2) for x in (a_n, b_n, h_n, P))
        order = range(C - 1, -1, -1) if reverse else range(C)
        h_c[order[0]].copy_(b_c[order[0]])
        P_c[order[0]].copy_(a_c[order[0]])
        for prev, c in zip(order, order[1:]):
            _affine(a_c[c], h_c[prev], b_c[c], diag, out=h_c[c])
            _compose(a_c[c], P_c[prev], diag, out=P_c[c])
        last = order[-1]

        # 2. the state entering every chunk: sequential over the N chunk summaries
        entering = torch.empty_like(h_n[:, :, 0])                     # (B, N, *S)
        chunks = range(N - 1, -1, -1) if reverse else range(N)
        P_last, x_last, into = P[:, :, last].unbind(1), h_n[:, :, last].unbind(1), entering.unbind(1)
        for n in chunks:
            into[n].copy_(s)
            s = _affine(P_last[n], s, x_last[n], diag)

        # 3. fix-up: add the carried-in state, moved through the prefix products
        if diag:
            h_n.addcmul_(P, entering[:, :, None])
        else:
            h_n.add_(apply(P, entering[:, :, None], diag))
    # fewer than C positions left: continue sequentially from the last chunk's state
    steps = list(zip(a[:, tail].unbind(1), b[:, tail].unbind(1), h[:, tail].unbind(1)))
    for a_t, b_t, h_t in (reversed(steps) if reverse else steps):
        s = _affine(a_t, s, b_t, diag, out=h_t)
    return h


def _affine(a, h, b, diag, out=None):
    """A h + b, written into ``out`` when given."""
    if diag:
        return torch.addcmul(b, a, h) if out is None else torch.addcmul(b, a, h, out=out)
    return torch.add(b, apply(a, h, diag)) if out is None else torch.add(b, apply(a, h, diag), out=out)


def _compose(a2, a1, diag, out):
    """A2 A1 written into ``out``."""
    return torch.mul(a2, a1, out=out) if diag else out.copy_(compose(a2, a1, diag))
