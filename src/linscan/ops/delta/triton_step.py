"""Fused decode step of the delta family (T == 1): one kernel reads the state once, applies the
gate and the R Householder steps of the token, reads the output and writes the new state.

    S <- e^{g} S;   for j = 1..R:  S <- S + beta_j k_j (v_j - S^T k_j)^T;   o = S^T (scale q)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _step_kernel(q_ptr, k_ptr, v_ptr, beta_ptr, g_ptr, h0_ptr, o_ptr, ht_ptr, scale, H, K, V,
                 R: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr,
                 HAS_H0: tl.constexpr):
    """One token for one (batch, head) and V tile. q [B, H, K]; k [B, R, H, K]; v [B, R, H, V];
    beta [B, R, H]; g [B, H]; states [B, H, K, V] float32; o [B, H, V]."""
    vt, bh = tl.program_id(0), tl.program_id(1)
    bh = bh.to(tl.int64)
    b, h = bh // H, bh % H
    kk = tl.arange(0, BK)
    vv = vt * BV + tl.arange(0, BV)
    k_mask, v_mask = kk < K, vv < V
    offs = (bh * K + kk[:, None]) * V + vv[None, :]
    mask = k_mask[:, None] & v_mask[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S = tl.load(h0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_G:
        S *= tl.exp(tl.load(g_ptr + bh).to(tl.float32))
    for j in tl.static_range(R):
        row = (b * R + j) * H + h
        k = tl.load(k_ptr + row * K + kk, mask=k_mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + row * V + vv, mask=v_mask, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + row).to(tl.float32)
        error = v - tl.sum(k[:, None] * S, 0)
        S += (beta * k)[:, None] * error[None, :]
    q = tl.load(q_ptr + bh * K + kk, mask=k_mask, other=0.0).to(tl.float32) * scale
    o = tl.sum(q[:, None] * S, 0)
    tl.store(o_ptr + bh * V + vv, o.to(o_ptr.dtype.element_ty), mask=v_mask)
    tl.store(ht_ptr + offs, S, mask=mask)


def delta_step_triton(q, k, v, beta, g, initial_state, *, scale):
    """The decode step as one kernel launch (no autograd).

    Args:
        q: ``[B, 1, H, K]``; k: ``[B, 1, R, H, K]``; v: ``[B, 1, R, H, V]``; beta: ``[B, 1, R, H]``;
        g: None or ``[B, 1, H]``; initial_state: None (zeros) or ``[B, H, K, V]``; scale: float.
    Returns:
        o ``[B, 1, H, V]`` in q's dtype and the new state ``[B, H, K, V]`` float32.
    """
    B, _, R, H, K = k.shape
    V = v.shape[-1]
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    o = q.new_empty(B, 1, H, V)
    state = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    BK = max(16, triton.next_power_of_2(K))
    BV = min(max(16, triton.next_power_of_2(V)), max(16, 8192 // BK))
    grid = (triton.cdiv(V, BV), B * H)
    g = q if g is None else g.contiguous()                           # q: a placeholder, never read
    _step_kernel[grid](q, k, v, beta, g, state if h0 is None else h0, o, state, scale, H, K, V,
                       R=R, BK=BK, BV=BV, HAS_G=g is not q, HAS_H0=h0 is not None)
    return o, state
