"""Triton backend of the decay family (MATH.md section 1): chunkwise forward and backward.

Forward, per chunk of C tokens (default 64) of every head, on a flat token axis
(dense batches are B packed sequences, so varlen needs no extra path):

    1. b = chunk-local cumulative log gate                 shared.chunk_cumsum
    2. W_n = (K e^{b_C - b})^T V, then the entering states  triton_fwd.chunk_writes,
       S_{n+1} = e^{b_C} S_n + W_n (sequential over chunks) shared.state_passing
    3. A = intra-chunk scores (sub-blocks for diagonal g)   triton_fwd.chunk_scores
    4. O = A V + (Q e^{b}) S_n                              triton_fwd.chunk_output

b serves the state pass only (the chunk decays e^{b_C}); the chunk kernels read the log
gate g and form every decay inside a chunk as a sum of g over the tokens it spans
(e^{b_t - b_s}, e^{b_C - b_s}: never a difference of cumulative sums, which loses
float32 accuracy after one strong decay and is NaN after g = -inf; ops/segsum.py).

Backward recomputes the entering states (steps 2) instead of storing them (only g, b,
A and the inputs are saved), runs the state pass in reverse for the state
gradients, then triton_bwd.chunk_backward gives dq, dk, dv, dg. T == 1 without
autograd is one fused decode kernel (triton_step). float64 inputs go to the
``chunk`` backend: GPU kernels compute in float32.
"""

from __future__ import annotations

import torch

from ..shared.triton import chunk_cumsum, chunk_length, dense_layout, dot_precision, state_passing, varlen_layout
from .chunk import decay_chunk
from .triton_bwd import chunk_backward
from .triton_fwd import chunk_output, chunk_scores, chunk_writes
from .triton_step import decay_step_triton


class DecayTriton(torch.autograd.Function):
    """q, k ``[T_total, H, K]``, v ``[T_total, H, V]``, g None | ``[T_total, H]`` | ``[T_total, H, K]``,
    h0 None | ``[N, H, K, V]`` -> (o ``[T_total, H, V]`` in q's dtype, final state ``[N, H, K, V]`` float32)."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, layout):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        h0_f32 = None if h0 is None else h0.float().contiguous()
        prec = dot_precision(q.dtype)
        g = None if g is None else g.contiguous()
        b = None if g is None else chunk_cumsum(g, layout)                        # 1.
        writes = chunk_writes(k, v, g, layout, prec=prec)                         # 2.
        states, final = state_passing(writes, b, layout, x0=h0_f32)
        a = chunk_scores(q, k, g, layout, scale=scale, prec=prec)                 # 3.
        o = chunk_output(q, v, g, a, states, layout, scale=scale, prec=prec)      # 4.
        ctx.save_for_backward(q, k, v, g, b, a, h0_f32)
        ctx.scale, ctx.layout, ctx.prec = scale, layout, prec
        ctx.dtypes = (None if g is None else g.dtype, None if h0 is None else h0.dtype)
        ctx.set_materialize_grads(False)
        return o, final

    @staticmethod
    def backward(ctx, do, d_final):
        q, k, v, g, b, a, h0 = ctx.saved_tensors
        layout, scale, prec = ctx.layout, ctx.scale, ctx.prec
        if do is None:
            do = torch.zeros(v.shape, dtype=q.dtype, device=q.device)          # only the final state was used
        do = do.to(q.dtype).contiguous()
        states, _ = state_passing(chunk_writes(k, v, g, layout, prec=prec), b, layout, x0=h0,
                                  store_final=False)                              # recompute 2.
        u = chunk_writes(q, do, g, layout, scale=scale, from_end=False, prec=prec)
        d_final = None if d_final is None else d_final.float()
        dstates, dh0 = state_passing(u, b, layout, x0=d_final, reverse=True,
                                     store_final=ctx.needs_input_grad[4])
        dq, dk, dv, dg = chunk_backward(q, k, v, g, a, do, states, dstates, layout, scale=scale, prec=prec)
        g_dtype, h0_dtype = ctx.dtypes
        dg = None if dg is None else dg.to(g_dtype)
        dh0 = None if dh0 is None else dh0.to(h0_dtype)
        return dq, dk, dv, dg, dh0, None, None                                   # scale, layout: no grad


def decay_triton(q, k, v, g=None, *, scale, initial_state=None, output_final_state=False,
                 cu_seqlens=None, chunk_size=None):
    """Triton backend; same contract as :func:`linscan.ops.decay_scan` (inputs already validated).

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (float32, bfloat16 or float16; computed in float32).
        g: None, ``[H]``, ``[B, T, H]`` or ``[B, T, H, K]`` natural-log decay, ``<= 0``.
        scale: multiplies q. initial_state: ``[N, H, K, V]`` or None.
        cu_seqlens: int ``[N + 1]`` offsets of a packed batch (B == 1), or None.
        chunk_size: rounded up to a power of two in [16, 128] (default 64); changes only
            the order of the arithmetic.
    Returns:
        o ``[B, T, H, V]`` in q's dtype; the final state ``[N, H, K, V]`` float32 (or None).

    float64 inputs run on the ``chunk`` backend (the kernels compute in float32).
    T == 1 without autograd runs the fused decode kernel.
    """
    if q.dtype == torch.float64:
        return decay_chunk(q, k, v, g, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                           chunk_size=chunk_size)
    B, T, H, K = q.shape
    if T == 1 and not _needs_grad(q, k, v, g, initial_state):
        o, state = decay_step_triton(q, k, v, g, scale=scale, initial_state=initial_state)
        return o, (state if output_final_state else None)
    C = chunk_length(chunk_size)
    layout = dense_layout(B, T, C, q.device) if cu_seqlens is None else varlen_layout(cu_seqlens, C)
    if g is not None and g.dim() == 1:
        g = g.view(1, 1, H).expand(B, T, H)                                       # (B, T, H)
    flat = [None if x is None else x.reshape(B * T, *x.shape[2:]) for x in (q, k, v, g)]
    o, state = DecayTriton.apply(*flat, initial_state, scale, layout)
    return o.view(B, T, H, v.shape[-1]), (state if output_final_state else None)


def _needs_grad(*xs) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)
