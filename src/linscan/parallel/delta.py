"""Sequence-parallel ``delta_scan`` (LASP-2 generalised, MATH.md section 7): see ``affine.py``.

A rank's map S -> A_r S + B_r comes from one run of the op itself: with the values widened
by K zero columns and the initial state ``[0 | I_K]``, the final state is ``[B_r | A_r]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import delta_scan as local_delta_scan
from ..ops.delta import check_arguments
from . import comm
from .affine import Family, lasp


def delta_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               g: torch.Tensor | None = None, *, scale: float | None = None,
               initial_state: torch.Tensor | None = None, output_final_state: bool = False,
               cu_seqlens: torch.Tensor | None = None, backend: str = "auto",
               chunk_size: int | None = None, group=None):
    """``linscan.ops.delta_scan`` (DeltaNet, Gated DeltaNet, DeltaProduct) over one sequence
    split across the ranks of ``group``.

    Rank r passes tokens ``[r T/W, (r+1) T/W)`` of q, k, v, beta and g and gets back its slice
    of o; ``initial_state``, ``cu_seqlens`` (global offsets), ``scale`` and the options are the
    same on every rank. The per-rank map A_r is a dense K x K matrix, kept in float32.
    Gradients and errors as in ``linscan.parallel.decay_scan``.
    """
    ranks = comm.resolve(group)

    def validate():
        return check_arguments(q, k, v, beta, g, scale, initial_state, cu_seqlens, chunk_size, ranks=ranks.world)

    dims, beta_checked, g_checked, scale_checked = comm.agree(
        ranks, q.device, validate, q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state,
        cu_seqlens=cu_seqlens, cu_seqlens_values=None if cu_seqlens is None else tuple(cu_seqlens.tolist()),
        scale=scale, output_final_state=output_final_state, backend=backend, chunk_size=chunk_size)
    options = dict(scale=scale_checked, backend=backend, chunk_size=chunk_size)

    def run(inputs, state, cu):
        return local_delta_scan(*inputs, initial_state=state, output_final_state=True, cu_seqlens=cu, **options)

    def summary(inputs):
        q_, k_, v_, beta_, g_ = inputs
        K, V = k_.shape[-1], v_.shape[-1]
        C, H = q_.shape[0], q_.shape[2]
        dtype = torch.float64 if q_.dtype == torch.float64 else torch.float32
        eye = torch.eye(K, dtype=dtype, device=q_.device).expand(C, H, K, K)
        start = torch.cat([eye.new_zeros(C, H, K, V), eye], dim=-1)          # [0 | I]
        _, final = local_delta_scan(q_, k_, F.pad(v_, (0, K)), beta_, g_, initial_state=start,
                                    output_final_state=True, **options)
        return final[..., V:], final[..., :V]                                 # A_r, B_r

    def slice_time(inputs, a, b):
        return [None if x is None else x[:, a:b] for x in inputs]

    family = Family(run=run, summary=summary, dense=True, slice_time=slice_time)
    state_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return lasp(family, [q, k, v, beta_checked, g_checked], initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, ranks=ranks,
                state_shape=(dims.H, dims.K, dims.V), state_dtype=state_dtype)
