"""Reference backend of the decay family: the token loop of MATH.md section 1.

Computes in float64 for float64 inputs, float32 otherwise. Slow by design;
every other backend is tested against it.
"""

from __future__ import annotations

import torch

from .. import varlen
from ..dtypes import compute_dtype, upcast
from ..registry import register
from .step import decay_step, log_decays


@register("decay", "naive")
def decay_naive(q, k, v, g=None, *, scale, initial_state=None, output_final_state=False,
                cu_seqlens=None, chunk_size=None):
    """Token loop; same contract as :func:`linscan.ops.decay_scan` (``chunk_size`` is ignored)."""
    if cu_seqlens is not None:
        per_token = g is not None and g.dim() > 1
        packed = (q, k, v, g if per_token else None)

        def run(q, k, v, g_seq, initial_state):
            return decay_naive(q, k, v, g_seq if per_token else g, scale=scale,
                               initial_state=initial_state, output_final_state=True)

        o, state = varlen.per_sequence(run, packed, cu_seqlens, initial_state)
        return o, (state if output_final_state else None)

    dtype = compute_dtype(q)
    qc, kc, vc, gc = upcast(q, k, v, g, dtype=dtype)
    B, T, H, K = q.shape
    state = q.new_zeros(B, H, K, v.shape[-1], dtype=dtype)
    if initial_state is not None:
        state = initial_state.to(dtype)
    outs = []
    steps = zip((qc * scale).unbind(1), kc.unbind(1), vc.unbind(1), log_decays(gc, T))
    for q_t, k_t, v_t, g_t in steps:
        o_t, state = decay_step(q_t, k_t, v_t, g_t, state)
        outs.append(o_t)
    o = torch.stack(outs, dim=1).to(q.dtype)               # (B, T, H, V)
    return o, (state if output_final_state else None)
