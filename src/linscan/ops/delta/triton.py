"""Triton backend of the delta family (DeltaNet, Gated DeltaNet, DeltaProduct; MATH.md section 2).

Reads in teaching order: the chunk layout, the forward launchers (steps 1-4 of
``triton_fwd.py``), the backward launchers (``triton_bwd.py``), the autograd Function, and the
backend function registered as ``delta``/``triton``. The T == 1 decode step is one fused kernel
(``triton_step.py``).

Launches: forward 3 (prep, state pass, outputs); backward 4 (state pass recomputed, P^T dO, reverse
state pass, input gradients). Memory: the forward keeps W, U (float32, [T*R, H, K + V]) and the
per-chunk inverses T_inv ([chunks, H, BL, BL]) for the backward; the states entering every chunk
([chunks, H, K, V]) are recomputed by the backward rather than saved.

Precision: float32 inputs use exact ("ieee") products; 16-bit inputs use tf32 for the outputs and
gradients and tf32x3 in the kernels that feed the float32 states (see ``_Plan.carried``).

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch.autograd.function import once_differentiable

from ..shared.triton import ChunkLayout, dense_layout, dot_precision, varlen_layout
from .chunk import DEFAULT_ROWS, delta_chunk
from .step import householder_axis
from .triton_bwd import _dstate_kernel, _dv_local_kernel, _grad_kernel
from .triton_fwd import _output_kernel, _prep_kernel, _state_kernel
from .triton_step import delta_step_triton

STATE_TILE = 8192     # elements of one [K, V-tile] state block per program
# num_stages=1 (no software pipelining of the loads inside the kernels' loops): with K = V = 128
# the pipelined copies alone overflow the 227 KB of shared memory of an H100/H200 (sm_90 compile).
# num_warps=8: the [64, 128] float32 tiles spill registers heavily with 4 warps (sm_90 compile).


@dataclass(frozen=True)
class _Plan:
    """The chunks (a shared ChunkLayout of C tokens each, i.e. L = C * R rows) and the sizes every
    kernel needs: H, K, V, and the constexprs (tiles of >= 16 for tl.dot, the dot precision)."""

    chunks: ChunkLayout
    H: int
    K: int
    V: int
    R: int
    dot: str

    @property
    def constexprs(self) -> dict:
        """C tokens and R rows per token; BL rows, BC tokens, BK, BV tile sizes; DOT precision;
        and the launch options num_warps, num_stages."""
        C = self.chunks.chunk_size
        BK = max(16, triton.next_power_of_2(self.K))
        BV = min(max(16, triton.next_power_of_2(self.V)), max(16, STATE_TILE // BK))
        return dict(C=C, R=self.R, BL=max(16, triton.next_power_of_2(C * self.R)),
                    BC=max(16, triton.next_power_of_2(C)), BK=BK, BV=BV, DOT=self.dot,
                    num_warps=8, num_stages=1)

    @property
    def carried(self) -> dict:
        """The constexprs of the kernels whose products feed the float32 states (steps 2-3 and 3'):
        "tf32x3" where the bulk uses "tf32", so that 16-bit inputs still get float32-accurate states."""
        return self.constexprs | {"DOT": "tf32x3" if self.dot == "tf32" else self.dot}

    @property
    def v_tiles(self) -> int:
        return triton.cdiv(self.V, self.constexprs["BV"])


def max_rows(K: int) -> int:
    """Householder rows per chunk (chunk_size * R) at most, and by default: one chunk is one register
    tile of [rows, K], and the backward's tiles fit the 227 KB of shared memory of an H100/H200
    (checked by compiling for sm_90) up to 64 x 128, so 32 rows for K > 128."""
    return DEFAULT_ROWS if K <= 128 else DEFAULT_ROWS // 2


# ---------------------------------------------------------------- forward launchers

def _prepare(k, v, beta, g, plan: _Plan):
    """Steps 1-2. k [TT*R, H, K], v [TT*R, H, V], beta [TT*R, H], g None | [TT, H].
    Returns T_inv [NC, H, BL, BL], W [TT*R, H, K] and U [TT*R, H, V], all float32."""
    ch, BL = plan.chunks, plan.constexprs["BL"]
    t_inv = k.new_empty(ch.num_chunks, plan.H, BL, BL, dtype=torch.float32)
    w = torch.empty_like(k, dtype=torch.float32)
    u = torch.empty_like(v, dtype=torch.float32)
    _prep_kernel[(ch.num_chunks, plan.H)](k, v, beta, _or(g, k), t_inv, w, u, ch.cu_seqlens, ch.chunk_index,
                                          plan.H, plan.K, plan.V, HAS_G=g is not None, **plan.carried)
    return t_inv, w, u


def _states(k, g, w, u, h0, plan: _Plan):
    """Step 3. Returns the states entering every chunk [NC, H, K, V], V_new [TT*R, H, V] and the
    final states [N, H, K, V] (float32)."""
    ch = plan.chunks
    h = k.new_empty(ch.num_chunks, plan.H, plan.K, plan.V, dtype=torch.float32)
    v_new = torch.empty_like(u)
    ht = k.new_empty(ch.num_seqs, plan.H, plan.K, plan.V, dtype=torch.float32)
    grid = (plan.v_tiles, ch.num_seqs * plan.H)
    _state_kernel[grid](k, _or(g, k), w, u, _or(h0, ht), h, v_new, ht, ch.cu_seqlens, ch.chunk_offsets,
                        plan.H, plan.K, plan.V, HAS_G=g is not None, HAS_H0=h0 is not None, **plan.carried)
    return h, v_new, ht


def _outputs(q, k, g, h, v_new, plan: _Plan, scale):
    """Step 4. q [TT, H, K]; returns o [TT, H, V] in q's dtype."""
    ch = plan.chunks
    o = q.new_empty(q.shape[0], plan.H, plan.V)
    grid = (plan.v_tiles, ch.num_chunks, plan.H)
    _output_kernel[grid](q, k, _or(g, k), h, v_new, o, ch.cu_seqlens, ch.chunk_index, scale,
                         plan.H, plan.K, plan.V, HAS_G=g is not None, **plan.constexprs)
    return o


# ---------------------------------------------------------------- backward launchers

def _state_grads(q, k, g, w, d_o, d_ht, plan: _Plan, scale):
    """Steps 4'a and 3' (reverse over chunks). Returns dV_new [TT*R, H, V], the gradients of the
    states leaving every chunk [NC, H, K, V] and of the initial states [N, H, K, V] (float32)."""
    ch = plan.chunks
    d_v_new = k.new_empty(k.shape[0], plan.H, plan.V, dtype=torch.float32)
    _dv_local_kernel[(plan.v_tiles, ch.num_chunks, plan.H)](
        q, k, _or(g, k), d_o, d_v_new, ch.cu_seqlens, ch.chunk_index, scale, plan.H, plan.K, plan.V,
        HAS_G=g is not None, **plan.constexprs)
    dh = k.new_empty(ch.num_chunks, plan.H, plan.K, plan.V, dtype=torch.float32)
    dh0 = k.new_empty(ch.num_seqs, plan.H, plan.K, plan.V, dtype=torch.float32)
    grid = (plan.v_tiles, ch.num_seqs * plan.H)
    _dstate_kernel[grid](q, k, _or(g, k), w, d_o, d_v_new, dh, _or(d_ht, dh0), dh0, ch.cu_seqlens,
                         ch.chunk_offsets, scale, plan.H, plan.K, plan.V, HAS_G=g is not None,
                         HAS_DHT=d_ht is not None, **plan.carried)
    return d_v_new, dh, dh0


def _input_grads(saved, h, dh, v_new, d_v_new, d_o, plan: _Plan, scale):
    """Steps 4', 2', 1'. Returns dq, dk, dv, dbeta, dg (float32, shaped like the packed inputs;
    dg None without a gate)."""
    q, k, v, beta, g, t_inv, w, u = saved
    ch = plan.chunks
    dq, dk, dv = (torch.empty_like(x, dtype=torch.float32) for x in (q, k, v))
    dbeta = torch.empty_like(beta, dtype=torch.float32)
    dg = None if g is None else torch.empty_like(g, dtype=torch.float32)
    _grad_kernel[(ch.num_chunks, plan.H)](
        q, k, v, beta, _or(g, k), t_inv, w, u, h, dh, v_new, d_v_new, d_o, dq, dk, dv, dbeta, _or(dg, dq),
        ch.cu_seqlens, ch.chunk_index, scale, plan.H, plan.K, plan.V, HAS_G=g is not None, **plan.constexprs)
    return dq, dk, dv, dbeta, dg


def _or(x, fallback):
    """A placeholder pointer for an absent optional input (the kernel never reads it)."""
    return fallback if x is None else x


# ---------------------------------------------------------------- autograd

class _DeltaTriton(torch.autograd.Function):
    """Packed chunkwise delta rule. q [TT, H, K]; k [TT*R, H, K]; v [TT*R, H, V]; beta [TT*R, H];
    g None | [TT, H]; h0 None | [N, H, K, V] float32. Returns o [TT, H, V] (q's dtype) and the
    final states [N, H, K, V] float32."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, plan, scale):
        t_inv, w, u = _prepare(k, v, beta, g, plan)
        h, v_new, ht = _states(k, g, w, u, h0, plan)
        o = _outputs(q, k, g, h, v_new, plan, scale)
        ctx.save_for_backward(q, k, v, beta, g, h0, t_inv, w, u)
        ctx.plan, ctx.scale = plan, scale
        return o, ht

    @staticmethod
    @once_differentiable
    def backward(ctx, d_o, d_ht):
        q, k, v, beta, g, h0, t_inv, w, u = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        h, v_new, _ = _states(k, g, w, u, h0, plan)                   # recomputed, not saved
        # incoming gradients may be broadcast views (the gradient of a sum has stride 0)
        d_o = d_o.contiguous()
        d_ht = None if d_ht is None else d_ht.contiguous()
        d_v_new, dh, dh0 = _state_grads(q, k, g, w, d_o, d_ht, plan, scale)
        saved = (q, k, v, beta, g, t_inv, w, u)
        dq, dk, dv, dbeta, dg = _input_grads(saved, h, dh, v_new, d_v_new, d_o, plan, scale)
        grads = [dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbeta.to(beta.dtype),
                 None if g is None else dg.to(g.dtype), None if h0 is None else dh0.to(h0.dtype)]
        return (*grads, None, None)                                  # plan and scale are not tensors


# ---------------------------------------------------------------- backend

def delta_triton(q, k, v, beta, g=None, *, scale, initial_state=None, output_final_state=False,
                 cu_seqlens=None, chunk_size=None):
    """Triton backend; same contract as :func:`linscan.ops.delta_scan`.

    Args:
        q: ``[B, T, H, K]``; k: ``[B, T, H, K]`` or ``[B, T, R, H, K]``; v: ``[B, T, H, V]`` or
            ``[B, T, R, H, V]``; beta: ``[B, T, H]`` or ``[B, T, R, H]``; g: None or ``[B, T, H]``.
            float32, bfloat16 or float16 (computed in float32). float64 inputs are delegated to the
            ``chunk`` backend, since the kernels compute in float32.
        scale: multiplies q. initial_state: None or ``[N, H, K, V]``.
        cu_seqlens: None or int ``[N + 1]`` offsets of a packed batch (B == 1).
        chunk_size: tokens per chunk, default and at most :func:`max_rows` ``// R`` (64 // R, or
            32 // R for K > 128).

    Returns:
        o ``[B, T, H, V]`` in q's dtype; the final state ``[N, H, K, V]`` float32, or None unless
        ``output_final_state``. T == 1 without cu_seqlens and without autograd runs the fused decode
        kernel; with autograd it runs as a single chunk.
    """
    if q.dtype == torch.float64:
        return delta_chunk(q, k, v, beta, g, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                           output_final_state=output_final_state, chunk_size=chunk_size)
    k, v, beta = householder_axis(k, v, beta)                        # (B, T, R, H, *)
    B, T, R, H, K = k.shape
    V = v.shape[-1]
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad
                                           for x in (q, k, v, beta, g, initial_state))
    if T == 1 and cu_seqlens is None and not grad:
        o, state = delta_step_triton(q, k, v, beta, g, initial_state, scale=scale)
        return o, (state if output_final_state else None)
    rows = max_rows(K)
    C = chunk_size or max(1, rows // R)
    if C * R > rows:
        raise ValueError(f"chunk_size: expected chunk_size * R <= {rows} for the triton backend at K = {K}, "
                         f"got chunk_size {C} with R = {R}")
    chunks = dense_layout(B, T, C, q.device) if cu_seqlens is None else varlen_layout(cu_seqlens, C)
    plan = _Plan(chunks, H, K, V, R, dot_precision(q.dtype))
    packed = (q.reshape(B * T, H, K), k.reshape(B * T * R, H, K), v.reshape(B * T * R, H, V),
              beta.reshape(B * T * R, H), None if g is None else g.reshape(B * T, H))
    packed = tuple(None if x is None else x.contiguous() for x in packed)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    o, state = _DeltaTriton.apply(*packed, h0, plan, scale)
    return o.view(B, T, H, V), (state if output_final_state else None)
