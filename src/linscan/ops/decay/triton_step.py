"""The decay family's T == 1 decode step as one fused Triton kernel.

    S = Diag(e^{g}) S + k v^T,      o = S^T (scale * q)

One program per (batch * head, V tile) reads its state tile once, writes the new
state and the output; no chunk machinery, no intermediate tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..shared.triton import tile


@triton.jit
def _step_kernel(q_ptr, k_ptr, v_ptr, g_ptr, h0_ptr, ht_ptr, o_ptr, scale, K, V,
                 BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, HAS_H0: tl.constexpr):
    bh, pid_v = tl.program_id(0), tl.program_id(1)
    rv = pid_v * BV + tl.arange(0, BV)
    v = tl.load(v_ptr + bh * V + rv, mask=rv < V, other=0.0).to(tl.float32)
    o = tl.zeros([BV], dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        kv = bh.to(tl.int64) * K * V + rk[:, None] * V + rv[None, :]
        mask = (rk[:, None] < K) & (rv[None, :] < V)
        s = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_H0:
            s = tl.load(h0_ptr + kv, mask=mask, other=0.0).to(tl.float32)
        if GATE == 1:
            s *= tl.exp(tl.load(g_ptr + bh).to(tl.float32))
        if GATE == 2:
            s *= tl.exp(tl.load(g_ptr + bh * K + rk, mask=rk < K, other=0.0).to(tl.float32))[:, None]
        k = tl.load(k_ptr + bh * K + rk, mask=rk < K, other=0.0).to(tl.float32)
        s += k[:, None] * v[None, :]
        tl.store(ht_ptr + kv, s, mask=mask)
        q = tl.load(q_ptr + bh * K + rk, mask=rk < K, other=0.0).to(tl.float32) * scale
        o += tl.sum(q[:, None] * s, axis=0)
    tl.store(o_ptr + bh * V + rv, o.to(o_ptr.dtype.element_ty), mask=rv < V)


def decay_step_triton(q, k, v, g, *, scale, initial_state=None):
    """One decode step (no autograd).

    Args:
        q, k: ``[B, 1, H, K]``; v: ``[B, 1, H, V]``; g: None, ``[H]``, ``[B, 1, H]`` or ``[B, 1, H, K]``.
        initial_state: ``[B, H, K, V]`` or None (zeros).
    Returns:
        o ``[B, 1, H, V]`` in q's dtype and the new state ``[B, H, K, V]`` float32.
    """
    B, _, H, K = q.shape
    V = v.shape[-1]
    gate = 0
    if g is not None:
        g = (g.expand(B, H) if g.dim() == 1 else g[:, 0]).float().contiguous()   # (B, H) | (B, H, K)
        gate = 2 if g.dim() == 3 else 1
    h0 = None if initial_state is None else initial_state.contiguous()
    ht = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device)
    o = torch.empty(B, 1, H, V, dtype=q.dtype, device=q.device)
    BK, BV = tile(K), tile(V)
    _step_kernel[(B * H, triton.cdiv(V, BV))](
        q.contiguous(), k.contiguous(), v.contiguous(), ht if g is None else g, ht if h0 is None else h0,
        ht, o, scale, K, V, BK=BK, BV=BV, GATE=gate, HAS_H0=h0 is not None)
    return o, ht
