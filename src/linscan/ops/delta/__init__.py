"""Delta family: DeltaNet, Gated DeltaNet, DeltaProduct (negative eigenvalues included)."""

from __future__ import annotations

import dataclasses

import torch

from .. import checks, registry
from . import chunk, naive  # noqa: F401  (register the backends)
from ..lazy_triton import register_lazy

register_lazy("delta", "linscan.ops.delta.triton", "delta_triton")


def delta_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               g: torch.Tensor | None = None, *, scale: float | None = None,
               initial_state: torch.Tensor | None = None, output_final_state: bool = False,
               cu_seqlens: torch.Tensor | None = None, backend: str = "auto",
               chunk_size: int | None = None):
    """The gated delta rule, optionally with R Householder steps per token (MATH.md section 2).

        S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale * q_t)

    With R steps per token (DeltaProduct): ``S <- exp(g_t) S``, then for j = 1..R
    ``S <- (I - beta_tj k_tj k_tj^T) S + beta_tj k_tj v_tj^T``; o_t is read after the last step.

    Args:
        q: ``[B, T, H, K]``.
        k: ``[B, T, H, K]``, or ``[B, T, R, H, K]`` for R Householder steps per token.
            Should be L2-normalised along K (the layers do it; the op does not require it).
        v: ``[B, T, H, V]`` or ``[B, T, R, H, V]``, following k's layout (same dtype and device as q).
        beta: write strength ``[B, T, H]`` or ``[B, T, R, H]``, following k's layout; values in
            [0, 2] (beta > 1 gives the transition negative eigenvalues).
        g: None (DeltaNet, DeltaProduct) or a natural-log decay ``[B, T, H]``, ``<= 0``
            (Gated DeltaNet), applied once per token before its Householder steps.
        scale: multiplies q; default ``1 / sqrt(K)``.
        initial_state: ``[N, H, K, V]`` state before the first token (default zeros);
            N = B, or the number of sequences with ``cu_seqlens``.
        output_final_state: also return the state after the last token.
        cu_seqlens: int ``[N + 1]`` offsets of a packed batch (B must be 1); every
            sequence starts from its own ``initial_state`` row and gets its own final state.
        backend: ``"auto"``, ``"naive"``, ``"chunk"`` (see ``linscan.ops.available()``).
        chunk_size: tokens per chunk for chunkwise backends (default ``64 // R``, so that a
            chunk holds about 64 Householder rows).

    Returns:
        o ``[B, T, H, V]`` in q's dtype, and the final state ``[N, H, K, V]`` (float32,
        float64 for float64 inputs) or None unless ``output_final_state``.
    """
    dims, beta, g, scale = check_arguments(q, k, v, beta, g, scale, initial_state, cu_seqlens, chunk_size)
    fn = registry.get("delta", backend, q.device)
    return fn(q, k, v, beta, g, scale=scale, initial_state=initial_state,
              output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)


def check_arguments(q, k, v, beta, g, scale, initial_state, cu_seqlens, chunk_size, *, ranks: int = 1):
    """``delta_scan``'s checks; returns (dims, beta, g, scale). ranks: the sequence is split over
    that many ranks (``linscan.parallel``): q holds T / ranks tokens, cu_seqlens and the state all T."""
    dims = checks.check_qkv(q, k, v, householder=True)
    B, T, R, H, K = dims.B, dims.T, dims.R, dims.H, dims.K
    checks.expect_floating(beta, "beta")
    beta_form = {"B T R H": (B, T, R, H)} if k.dim() == 5 else {"B T H": (B, T, H)}
    beta = checks.check_gate(beta, "beta", beta_form, q.device, max_value=None)
    checks.check_range(beta, "beta", 0, 2)
    g = checks.check_gate(g, "g", {"B T H": (B, T, H)}, q.device)
    checks.check_sequences(dataclasses.replace(dims, T=T * ranks), cu_seqlens, initial_state, chunk_size, q.device)
    return dims, beta, g, checks.check_scale(scale, K)
