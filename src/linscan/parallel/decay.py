"""Sequence-parallel ``decay_scan`` (LASP-2, MATH.md section 7): see ``affine.py``."""

from __future__ import annotations

import torch

from ..ops import decay_scan as local_decay_scan
from ..ops.decay import check_arguments
from . import comm
from .affine import Family, lasp


def decay_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None, *,
               scale: float | None = None, initial_state: torch.Tensor | None = None,
               output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
               backend: str = "auto", chunk_size: int | None = None, group=None):
    """``linscan.ops.decay_scan`` over one sequence split across the ranks of ``group``.

    Rank r passes tokens ``[r T/W, (r+1) T/W)`` of q, k, v and g (``[B, T/W, ...]``; a
    per-head ``g [H]`` whole) and gets back its slice of o. Every other argument is the same
    on every rank: ``initial_state [N, H, K, V]`` is the state before rank 0's first token,
    ``cu_seqlens`` holds the global offsets (B == 1; sequences may straddle ranks).
    With ``output_final_state`` every rank gets the final states of all sequences.
    group: a ``torch.distributed`` process group (None: the world).

    Gradients: each rank gets the full gradient of its slice; ``initial_state`` row n gets its
    full gradient on the rank where sequence n starts and zeros on the others (sum over the
    group for the total). Bad or mismatched inputs raise the same error on every rank.
    """
    ranks = comm.resolve(group)

    def validate():
        return check_arguments(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size, ranks=ranks.world)

    dims, g_checked, scale_checked = comm.agree(
        ranks, q.device, validate, q=q, k=k, v=v, g=g, initial_state=initial_state, cu_seqlens=cu_seqlens,
        cu_seqlens_values=None if cu_seqlens is None else tuple(cu_seqlens.tolist()), scale=scale,
        output_final_state=output_final_state, backend=backend, chunk_size=chunk_size)
    options = dict(scale=scale_checked, backend=backend, chunk_size=chunk_size)

    def run(inputs, state, cu):
        return local_decay_scan(*inputs, initial_state=state, output_final_state=True, cu_seqlens=cu, **options)

    def summary(inputs):
        q_, k_, v_, g_ = inputs
        _, B = local_decay_scan(q_, k_, v_, g_, output_final_state=True, **options)
        return _decay_total(g_, B, q_.shape[1]), B

    def slice_time(inputs, a, b):
        q_, k_, v_, g_ = inputs
        g_ = g_ if g_ is None or g_.dim() == 1 else g_[:, a:b]
        return [q_[:, a:b], k_[:, a:b], v_[:, a:b], g_]

    family = Family(run=run, summary=summary, dense=False, slice_time=slice_time)
    state_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return lasp(family, [q, k, v, g_checked], initial_state=initial_state, output_final_state=output_final_state,
                cu_seqlens=cu_seqlens, ranks=ranks, state_shape=(dims.H, dims.K, dims.V), state_dtype=state_dtype)


def _decay_total(g, B, T):
    """A = exp(sum of g over the T tokens) as ``[C, H, K]`` (B: their final state ``[C, H, K, V]``)."""
    (C, H, K, _), dtype = B.shape, B.dtype
    if g is None:
        return torch.ones(C, H, K, dtype=dtype, device=B.device)
    g = g.to(dtype)
    if g.dim() == 1:
        total = (T * g)[None, :, None]
    elif g.dim() == 3:
        total = g.sum(1)[..., None]
    else:
        total = g.sum(1)
    return total.exp().expand(C, H, K).to(dtype)
