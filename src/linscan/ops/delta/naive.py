"""Reference backend of the delta family: the token loop of MATH.md section 2.

Computes in float64 for float64 inputs, float32 otherwise. Slow by design;
every other backend is tested against it.
"""

from __future__ import annotations

import torch

from .. import varlen
from ..dtypes import compute_dtype, upcast
from ..registry import register
from .step import delta_step, householder_axis


@register("delta", "naive")
def delta_naive(q, k, v, beta, g=None, *, scale, initial_state=None, output_final_state=False,
                cu_seqlens=None, chunk_size=None):
    """Token loop; same contract as :func:`linscan.ops.delta_scan` (``chunk_size`` is ignored)."""
    if cu_seqlens is not None:
        def run(q, k, v, beta, g, initial_state):
            return delta_naive(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                               output_final_state=True)

        o, state = varlen.per_sequence(run, (q, k, v, beta, g), cu_seqlens, initial_state)
        return o, (state if output_final_state else None)

    dtype = compute_dtype(q)
    k, v, beta = householder_axis(k, v, beta)                # (B, T, R, H, *)
    qc, kc, vc, bc, gc = upcast(q, k, v, beta, g, dtype=dtype)
    B, T, H, K = q.shape
    state = q.new_zeros(B, H, K, v.shape[-1], dtype=dtype)
    if initial_state is not None:
        state = initial_state.to(dtype)
    outs = []
    # unbind, not x[:, t]: the backward of indexing allocates a full-size zero tensor per token
    gates = [None] * T if gc is None else gc.unbind(1)
    for q_t, k_t, v_t, b_t, g_t in zip((qc * scale).unbind(1), kc.unbind(1), vc.unbind(1), bc.unbind(1), gates):
        o_t, state = delta_step(q_t, k_t, v_t, b_t, g_t, state)
        outs.append(o_t)
    o = torch.stack(outs, dim=1).to(q.dtype)               # (B, T, H, V)
    return o, (state if output_final_state else None)
