"""Decay family: linear attention, RetNet, Lightning Attention, simple GLA, GLA, HGRN-2."""

from __future__ import annotations

import dataclasses

import torch

from .. import checks, registry
from . import chunk, naive  # noqa: F401  (register the backends)
from ..lazy_triton import register_lazy

register_lazy("decay", "linscan.ops.decay.triton", "decay_triton")


def decay_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None, *,
               scale: float | None = None, initial_state: torch.Tensor | None = None,
               output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
               backend: str = "auto", chunk_size: int | None = None):
    """Linear attention with an optional decay (MATH.md section 1).

        S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T,      o_t = S_t^T (scale * q_t)

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (same dtype and device).
        g: natural-log decay, ``<= 0``: None (no decay: plain linear attention),
            ``[H]`` (constant per head: RetNet, Lightning), ``[B, T, H]``
            (data-dependent scalar: simple GLA, Mamba-2) or ``[B, T, H, K]``
            (data-dependent diagonal: GLA, HGRN-2).
        scale: multiplies q; default ``1 / sqrt(K)``.
        initial_state: ``[N, H, K, V]`` state before the first token (default zeros);
            N = B, or the number of sequences with ``cu_seqlens``.
        output_final_state: also return the state after the last token.
        cu_seqlens: int ``[N + 1]`` offsets of a packed batch (B must be 1); every
            sequence starts from its own ``initial_state`` row and gets its own final state.
        backend: ``"auto"``, ``"naive"``, ``"chunk"`` (see ``linscan.ops.available()``).
        chunk_size: chunk length C for chunkwise backends (default 64).

    Returns:
        o ``[B, T, H, V]`` in q's dtype, and the final state ``[N, H, K, V]`` (float32,
        float64 for float64 inputs) or None unless ``output_final_state``.
    """
    dims, g, scale = check_arguments(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size)
    fn = registry.get("decay", backend, q.device)
    return fn(q, k, v, g, scale=scale, initial_state=initial_state,
              output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)


def check_arguments(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size, *, ranks: int = 1):
    """``decay_scan``'s checks; returns (dims, g, scale). ranks: the sequence is split over that
    many ranks (``linscan.parallel``): q holds T / ranks tokens, cu_seqlens and the state all T."""
    dims = checks.check_qkv(q, k, v)
    B, T, H, K = dims.B, dims.T, dims.H, dims.K
    g = checks.check_gate(g, "g", {"H": (H,), "B T H": (B, T, H), "B T H K": (B, T, H, K)}, q.device)
    checks.check_sequences(dataclasses.replace(dims, T=T * ranks), cu_seqlens, initial_state, chunk_size, q.device)
    return dims, g, checks.check_scale(scale, K)
