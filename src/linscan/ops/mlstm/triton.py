"""Triton backend of the mLSTM family (MATH.md section 3), forward and backward.

Chunkwise (TFLA) like ops/mlstm/chunk.py, whose semantics it reproduces exactly: the state
(C, n, m) is materialised at chunk boundaries by one sequential pass over the chunks, then
every chunk computes its outputs in parallel with matrix products. Dense and packed (varlen)
batches share one code path: tokens on a flat axis cut into chunks per sequence
(``ChunkLayout`` of ops/shared/triton.py), so varlen costs no padding of q, k, v.
Forward: the gate layout (a few small PyTorch ops), ``state_fwd_kernel``, ``output_fwd_kernel``.
Backward:

    1. states entering every chunk, recomputed (``state_fwd_kernel``): nothing of size
       N x K x V is kept between forward and backward, only q, k, v, h and per-token scalars
    2. readout gradients per token (dnum = c dh, dqn, dm), in PyTorch (O(T H) work)
    3. gradients of the states leaving every chunk, a reverse pass (``state_bwd_kernel``)
    4. dq, dk, dv and the gate gradients, every chunk in parallel (``chunk_bwd_kernel``), except
       for the max-state's gradient carried back from the following chunks:
    5. that one, a scan over each sequence's chunks (``max_state_scan_kernel``), and its share
       of the gate gradients (PyTorch, O(T H))

Kernels: ``triton_fwd.py``, ``triton_bwd.py`` (their docstrings carry the formulas),
``triton_parts.py`` (shared tile loads and gate algebra), ``triton_step.py`` (the fused T == 1
decode step). Matrix products read the input dtype (bf16/fp16/fp32) and accumulate in float32;
float32 operands (weighted keys, states) enter them as hi + lo pairs (``EXACT_PRODUCTS``), so
final states and gate gradients keep float32 accuracy with bf16 inputs. Log-weights inside a
chunk are segment sums of lf (never differences of cumulative sums), as in chunk.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
from torch.autograd.function import once_differentiable

from ..shared.triton import ChunkLayout, chunk_length, dense_layout, dot_precision, tile, varlen_layout
from .chunk import mlstm_chunk
from .step import check_input_gate, log_gates, start_state
from .triton_bwd import chunk_bwd_kernel, max_state_scan_kernel, state_bwd_kernel
from .triton_fwd import output_fwd_kernel, state_fwd_kernel
from .triton_step import mlstm_step_triton

DEFAULT_CHUNK = 64
SCAN_BLOCK = 64             # chunks per step of the max-state gradient scan
# 16-bit inputs: float32 operands (weighted keys, states, scores) enter matrix products as hi + lo
# pairs in the input dtype, as accurate as float32 at twice the tensor-core work of those products.
# False rounds them to the input dtype once (faster; states and gate gradients then carry errors of
# that dtype's rounding, ~1e-3 relative in bf16, against ~1e-7 for the naive loop on bf16 inputs).
EXACT_PRODUCTS = True
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class Options:
    chunk: int              # C, a power of two in [16, 128]
    precision: str          # tl.dot input precision: "ieee" for float32 operands (no TF32)
    stabilise: bool         # exp input gate: carry the max-state m
    normalize: bool
    eps: float


def mlstm_triton(q, k, v, i, f, *, input_gate="exp", normalize=True, initial_state=None,
                 output_final_state=False, cu_seqlens=None, chunk_size=None, eps=1e-6):
    """Triton backend; same contract as :func:`linscan.ops.mlstm_scan`.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (float32, bf16 or fp16; K, V up to 256).
        i, f: raw gate pre-activations ``[B, T, H]``.
        initial_state: ``(C [N, H, K, V], n [N, H, K], m [N, H])`` or None (zeros).
        cu_seqlens: int ``[N + 1]`` offsets of a packed batch (B == 1).
        chunk_size: a hint, rounded up to a power of two in [16, 128] (default 64): it changes
            the order of the arithmetic only, never the result.
    Returns:
        h ``[B, T, H, V]`` in q's dtype; the final state (float32) or None.

    float64 inputs are delegated to the ``chunk`` backend (GPU kernels compute in float32).
    T == 1 without gradients runs the fused decode kernel (``triton_step.py``); with gradients
    it runs through the chunk kernels (one partial chunk), which are differentiable.
    """
    stabilise = check_input_gate(input_gate)
    if q.dtype == torch.float64:
        return mlstm_chunk(q, k, v, i, f, input_gate=input_gate, normalize=normalize,
                           initial_state=initial_state, output_final_state=output_final_state,
                           cu_seqlens=cu_seqlens, chunk_size=chunk_size, eps=eps)
    B, T, H, K = q.shape
    V = v.shape[-1]
    li, lf = log_gates(i, f, input_gate, torch.float32)                       # (B, T, H)
    if T == 1 and not _needs_grad(q, k, v, i, f, *(initial_state or ())):
        state = start_state(initial_state, (B, H, K, V), stabilise=stabilise, dtype=torch.float32,
                            device=q.device)
        h, state = mlstm_step_triton(q[:, 0], k[:, 0], v[:, 0], li[:, 0], lf[:, 0], state,
                                     stabilise=stabilise, normalize=normalize, eps=eps)
        return h[:, None], (state if output_final_state else None)
    C = chunk_length(chunk_size, DEFAULT_CHUNK)
    layout = dense_layout(B, T, C, q.device) if cu_seqlens is None else varlen_layout(cu_seqlens, C)
    state = start_state(initial_state, (layout.num_seqs, H, K, V), stabilise=stabilise,
                        dtype=torch.float32, device=q.device)
    options = Options(C, dot_precision(q.dtype), stabilise, bool(normalize), float(eps))
    flat = (x.reshape(B * T, *x.shape[2:]) for x in (q, k, v, li, lf))       # (T_total, H, *)
    h, *final = MlstmTritonFunction.apply(*flat, *state, layout, options)
    return h.view(B, T, H, V), (tuple(final) if output_final_state else None)


class MlstmTritonFunction(torch.autograd.Function):
    """(q, k [T_total, H, K], v [T_total, H, V], li, lf [T_total, H] float32, C0, n0, m0 [N, H, ...]
    float32, ChunkLayout, Options) -> (h [T_total, H, V] in q's dtype, C_T, n_T, m_T)."""

    @staticmethod
    def forward(ctx, q, k, v, li, lf, mem0, norm0, m0, layout, options):
        dtype = q.dtype
        q, k, v = (_operand(x) for x in (q, k, v))
        slots = TokenSlots(layout)
        gates = slots.gates(li, lf)                                           # b, lf, li (H, NT * C)
        states, final = state_pass(k, v, gates, (mem0, norm0, m0), layout, options)
        training = any(ctx.needs_input_grad[:8])
        # the backward reads h in float32 (its dh . h); inference writes q's dtype directly
        h, m_tok, qn = chunk_outputs(q, k, v, gates, states, layout, options,
                                     out_dtype=torch.float32 if training else dtype)
        if training:
            ctx.save_for_backward(q, k, v, *gates, mem0, norm0, m0, h, m_tok, qn)
            ctx.layout, ctx.slots, ctx.options, ctx.dtype = layout, slots, options, dtype
        return (h.to(dtype), *final)

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, d_mem, d_norm, d_m):
        q, k, v, b, lf, li, mem0, norm0, m0, h, m_tok, qn = ctx.saved_tensors
        gates, layout, opt = (b, lf, li), ctx.layout, ctx.options
        d_final = tuple(torch.zeros_like(x) if d is None else d.float().contiguous()
                        for d, x in zip((d_mem, d_norm, d_m), (mem0, norm0, m0)))
        dh = torch.zeros_like(h, dtype=v.dtype) if dh is None else _operand(dh)         # v: an operand
        states, _ = state_pass(k, v, gates, (mem0, norm0, m0), layout, opt)                 # 1.
        c, dqn, dm_readout = readout_grads(dh, h, m_tok, qn, ctx.slots, opt)                 # 2.
        d_states, d_mem0, d_norm0 = state_grads(q, dh, gates, states[2], m_tok, c, dqn,      # 3.
                                                d_final[:2], layout, opt)
        dq, dk, dv, dli, dlf, carry = chunk_grads(q, k, v, dh, gates, m_tok, c, dqn, dm_readout,  # 4.
                                                  states, d_states, layout, opt)
        if opt.stabilise:                                                                   # 5.
            dli, dlf, dm0 = max_state_grads(dli, dlf, carry, d_final[2], layout, opt)
        else:
            dm0 = torch.zeros_like(m0)
        dli, dlf = ctx.slots.tokens(dli), ctx.slots.tokens(dlf)                             # (T_total, H)
        # gradients of q, k, v, li, lf, C0, n0, m0; None for the layout and the options
        return (dq.to(ctx.dtype), dk.to(ctx.dtype), dv.to(ctx.dtype), dli, dlf, d_mem0, d_norm0, dm0,
                None, None)


class TokenSlots:
    """Per-token scalars ``[T_total, H]`` <-> the kernels' chunk slots ``[H, NT * C]``.

    Chunk i owns the slots i * C .. i * C + C - 1, filled with its tokens start .. end - 1 and,
    past a sequence's end, with state-neutral padding.
    """

    def __init__(self, layout: ChunkLayout):
        C, device = layout.chunk_size, layout.cu_seqlens.device
        seq, j = layout.chunk_index.long().unbind(1)
        cu = layout.cu_seqlens.long()
        token = (cu[seq] + j * C)[:, None] + torch.arange(C, device=device)    # (NT, C)
        self.valid = token < cu[seq + 1][:, None]
        self.token = token.clamp(max=layout.num_tokens - 1)
        self.num_tokens = layout.num_tokens

    def slots(self, x: torch.Tensor, pad: float = 0.0) -> torch.Tensor:
        """``[T_total, H]`` -> float32 ``[H, NT * C]``, ``pad`` in the slots past a sequence's end."""
        x = torch.where(self.valid[..., None], x.float()[self.token], pad)      # (NT, C, H)
        return x.permute(2, 0, 1).reshape(x.shape[2], -1).contiguous()

    def tokens(self, y: torch.Tensor) -> torch.Tensor:
        """``[H, NT * C]`` -> ``[T_total, H]``: the real tokens' slots (the inverse of :meth:`slots`)."""
        H = y.shape[0]
        out = y.new_zeros(self.num_tokens, H)
        out[self.token[self.valid]] = y.view(H, *self.valid.shape).permute(1, 2, 0)[self.valid]
        return out

    def gates(self, li: torch.Tensor, lf: torch.Tensor):
        """``(b, lf, li)`` ``[H, NT * C]`` float32: the chunk-local cumulative sum of lf, lf and li,
        padded with lf = 0 and li = -inf (no forgetting, no write)."""
        lf, li = self.slots(lf), self.slots(li, float("-inf"))
        C = self.valid.shape[1]
        b = lf.view(lf.shape[0], -1, C).cumsum(-1).view_as(lf)
        return b, lf, li


def state_pass(k, v, gates, state, layout: ChunkLayout, opt: Options):
    """The state entering every chunk and after each sequence's last one.

    Args: k ``[T_total, H, K]``, v ``[T_total, H, V]``; gates (b, lf, li) ``[H, NT * C]``;
        state (C0 ``[N, H, K, V]``, n0 ``[N, H, K]``, m0 ``[N, H]``) float32.
    Returns: ``(C_in [NT, H, K, V], n_in [NT, H, K], m_in [NT, H])`` and ``(C_T, n_T, m_T)`` ``[N, H, ...]``.
    """
    _, H, K = k.shape
    V, NT = v.shape[-1], layout.num_chunks
    BK, BV = _tiles(K, V)
    entering = (k.new_empty(NT, H, K, V, dtype=torch.float32), k.new_empty(NT, H, K, dtype=torch.float32),
                k.new_empty(NT, H, dtype=torch.float32))
    final = tuple(torch.empty_like(x, dtype=torch.float32) for x in state)
    grid = (layout.num_seqs * H, triton.cdiv(K, BK) * triton.cdiv(V, BV))
    state_fwd_kernel[grid](k, v, *gates, *(x.contiguous() for x in state), *entering, *final,
                           layout.cu_seqlens, layout.chunk_offsets, gates[0].shape[-1],
                           H=H, K=K, V=V, BT=opt.chunk, BK=BK, BV=BV, STABILISE=opt.stabilise,
                           SPLIT=_split(v), PRECISION=opt.precision, num_warps=8)
    return entering, final


def chunk_outputs(q, k, v, gates, states, layout: ChunkLayout, opt: Options, out_dtype=torch.float32):
    """h ``[T_total, H, V]`` in ``out_dtype`` and, per token slot ``[H, NT * C]``, m_t and qn_t = q^ . n_t."""
    _, H, K = q.shape
    V = v.shape[-1]
    BK, BV = tile(K, 32), tile(V, 64)
    h = q.new_empty(q.shape[0], H, V, dtype=out_dtype)
    m_tok, qn = torch.empty_like(gates[0]), torch.zeros_like(gates[0])
    grid = (layout.num_chunks, triton.cdiv(V, BV), H)
    output_fwd_kernel[grid](q, k, v, *gates, *states, h, m_tok, qn, layout.cu_seqlens, layout.chunk_index,
                            gates[0].shape[-1], K ** -0.5, opt.eps, H=H, K=K, V=V, BT=opt.chunk, BK=BK, BV=BV,
                            STABILISE=opt.stabilise, NORMALIZE=opt.normalize, SPLIT=_split(q),
                            PRECISION=opt.precision, num_warps=8)
    return h, m_tok, qn


def readout_grads(dh, h, m_tok, qn, slots: TokenSlots, opt: Options):
    """Per-token-slot ``[H, NT * C]`` readout gradients: dnum = c * dh, dqn, and the direct dm.

    normalize: h = num / den, den = max(|qn|, e^{-m}) + eps, so c = 1/den and d den = -(dh . h)/den
    goes to qn or (through e^{-m}) to m, whichever side of the max won; otherwise h = e^m num,
    c = e^m, dm = dh . h.
    """
    dh_h = slots.slots((dh.float() * h).sum(-1))                              # (H, NT * C)
    if not opt.normalize:
        return m_tok.exp(), torch.zeros_like(m_tok), dh_h
    floor = (-m_tok).exp()
    den = torch.maximum(qn.abs(), floor) + opt.eps
    d_den = -dh_h / den
    by_qn = qn.abs() > floor
    zero = torch.zeros((), dtype=den.dtype, device=den.device)
    return den.reciprocal(), torch.where(by_qn, d_den * qn.sign(), zero), torch.where(by_qn, zero, -d_den * floor)


def state_grads(q, dh, gates, m_in, m_tok, c, dqn, d_final, layout: ChunkLayout, opt: Options):
    """Gradients of the state leaving every chunk, ``[NT, H, K, V]`` and ``[NT, H, K]``, and of the
    initial (C0, n0); ``d_final`` = gradients of (C_T, n_T)."""
    _, H, K = q.shape
    V, NT = dh.shape[-1], layout.num_chunks
    BK, BV = _tiles(K, V)
    d_states = (q.new_empty(NT, H, K, V, dtype=torch.float32), q.new_empty(NT, H, K, dtype=torch.float32))
    d_initial = tuple(torch.empty_like(x) for x in d_final)
    grid = (layout.num_seqs * H, triton.cdiv(K, BK) * triton.cdiv(V, BV))
    state_bwd_kernel[grid](q, dh, *gates, m_in, m_tok, c, dqn, *d_final, *d_states, *d_initial,
                           layout.cu_seqlens, layout.chunk_offsets, gates[0].shape[-1], K ** -0.5,
                           H=H, K=K, V=V, BT=opt.chunk, BK=BK, BV=BV, STABILISE=opt.stabilise,
                           SPLIT=_split(dh), PRECISION=opt.precision, num_warps=8)
    return d_states, *d_initial


def chunk_grads(q, k, v, dh, gates, m_tok, c, dqn, dm_readout, states, d_states, layout: ChunkLayout,
                opt: Options):
    """dq, dk, dv (float32, the inputs' layout), dli and dlf ``[H, NT * C]`` but for the max-state
    carried in from the next chunk, and per chunk ``[NT, H]`` (carry, open, s*): dm_in = carry +
    open * dm_out, and the write s* that wins the last token's max-state (see triton_bwd.py)."""
    _, H, K = q.shape
    V, NT = v.shape[-1], layout.num_chunks
    BK, BV = tile(K, 32), tile(V, 32)
    dq, dk = torch.empty_like(q, dtype=torch.float32), torch.empty_like(k, dtype=torch.float32)
    dv = torch.empty_like(v, dtype=torch.float32)
    dli, dlf = torch.empty_like(m_tok), torch.empty_like(m_tok)
    carry = (m_tok.new_zeros(NT, H), m_tok.new_zeros(NT, H), torch.zeros(NT, H, dtype=torch.int32, device=q.device))
    chunk_bwd_kernel[(NT, H)](q, k, v, dh, *gates, states[2], m_tok, c, dqn, dm_readout, states[0], states[1],
                              *d_states, dq, dk, dv, dli, dlf, *carry, layout.cu_seqlens, layout.chunk_index,
                              gates[0].shape[-1], K ** -0.5, H=H, K=K, V=V, BT=opt.chunk, BK=BK, BV=BV,
                              STABILISE=opt.stabilise, SPLIT=_split(v), PRECISION=opt.precision, num_warps=8)
    return dq, dk, dv, dli, dlf, carry


def max_state_grads(dli, dlf, carry, d_m_final, layout: ChunkLayout, opt: Options):
    """Add the max-state's gradient flowing back across chunks to dli, dlf ``[H, NT * C]``; return
    them and dm0 ``[N, H]``.

    ``max_state_scan_kernel`` gives dm_in of every chunk; dm_out (dm_in of the next chunk, or
    dL/dm_T after a sequence's last) then reaches the gates of the chunk's last token like any
    dm_t there: all of b (so every dlf) when m_in won it, else b_C - b_s* + li_s*.
    """
    carry, opened, best = carry                                               # (NT, H)
    H, NT, C = dli.shape[0], layout.num_chunks, opt.chunk
    dm_in, dm0 = torch.empty_like(carry), torch.empty_like(d_m_final)
    max_state_scan_kernel[(layout.num_seqs * H,)](carry, opened, d_m_final.contiguous(), dm_in, dm0,
                                                  layout.chunk_offsets, H=H, BN=SCAN_BLOCK)
    seq, j = layout.chunk_index.long().unbind(1)
    counts = (layout.chunk_offsets[1:] - layout.chunk_offsets[:-1]).long()
    dm_out = torch.where((j == counts[seq] - 1)[:, None], d_m_final[seq], dm_in.roll(-1, 0))   # (NT, H)
    r = torch.arange(C, device=dli.device)
    s_best = best.long()[..., None]                                           # (NT, H, 1)
    through = torch.where(opened[..., None] > 0, 1.0, (r > s_best).float())   # (NT, H, C)
    to_best = (r == s_best).float() * (dm_out * (1.0 - opened))[..., None]

    def slots(x):                                                             # (NT, H, C) -> (H, NT * C)
        return x.permute(1, 0, 2).reshape(H, NT * C)

    return dli + slots(to_best), dlf + slots(dm_out[..., None] * through), dm0


def _tiles(K: int, V: int) -> tuple[int, int]:
    """(BK, BV) of the state passes, whose grid tiles K x V: 64 x 32, so that B = 1, H = 16,
    K = V = 128 already gives 128 sequential programs (about one per SM of an H100/H200), each
    with a short step. The chunk kernels loop over tiles of 32 (64 for the output's V): larger
    ones spill registers on sm_90 at C = 64 (ptxas, bf16, K = V = 128)."""
    return tile(K, 64), tile(V, 32)


def _operand(x: torch.Tensor) -> torch.Tensor:
    """x contiguous, as a matrix-product operand. Under the interpreter bf16 goes to float32: it
    multiplies bf16 tiles as their raw integer bits (triton 3.9; numpy has no bf16). fp16 stays."""
    if INTERPRETER and x.dtype == torch.bfloat16:
        x = x.float()
    return x.contiguous()


def _split(x: torch.Tensor) -> bool:
    """SPLIT for kernels whose products take x's dtype: hi + lo float32 operands for 16-bit inputs."""
    return EXACT_PRODUCTS and x.dtype in (torch.bfloat16, torch.float16)


def _needs_grad(*xs) -> bool:
    return torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in xs)
