"""Reference backend of the mLSTM family: the token loop of MATH.md section 3.

Computes in float64 for float64 inputs, float32 otherwise. Slow by design;
every other backend is tested against it.
"""

from __future__ import annotations

import torch

from .. import varlen
from ..dtypes import compute_dtype, upcast
from ..registry import register
from .step import check_input_gate, log_gates, mlstm_step, start_state


@register("mlstm", "naive")
def mlstm_naive(q, k, v, i, f, *, input_gate="exp", normalize=True, initial_state=None,
                output_final_state=False, cu_seqlens=None, chunk_size=None, eps=1e-6):
    """Token loop; same contract as :func:`linscan.ops.mlstm_scan` (``chunk_size`` is ignored)."""
    options = dict(input_gate=input_gate, normalize=normalize, eps=eps)
    if cu_seqlens is not None:

        def run(q, k, v, i, f, initial_state):
            return mlstm_naive(q, k, v, i, f, initial_state=initial_state, output_final_state=True, **options)

        o, state = varlen.per_sequence(run, (q, k, v, i, f), cu_seqlens, initial_state)
        return o, (state if output_final_state else None)

    stabilise = check_input_gate(input_gate)
    dtype = compute_dtype(q)
    B, T, H, K = q.shape
    qc, kc, vc = upcast(q, k, v, dtype=dtype)
    li, lf = log_gates(i, f, input_gate, dtype)                  # (B, T, H)
    state = start_state(initial_state, (B, H, K, v.shape[-1]), stabilise=stabilise, dtype=dtype,
                        device=q.device)
    qc = qc * K ** -0.5
    outs = []
    # unbind, not x[:, t]: the backward of indexing allocates a full-size zero tensor per token
    for q_t, k_t, v_t, i_t, f_t in zip(*(x.unbind(1) for x in (qc, kc, vc, li, lf))):
        h_t, state = mlstm_step(q_t, k_t, v_t, i_t, f_t, state, stabilise=stabilise, normalize=normalize, eps=eps)
        outs.append(h_t)
    o = torch.stack(outs, dim=1).to(q.dtype)                     # (B, T, H, V)
    return o, (state if output_final_state else None)
