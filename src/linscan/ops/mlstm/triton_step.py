"""Fused single-token mLSTM step (T == 1 decode) in Triton: ops/mlstm/step.py in one kernel.

    m' = max(lf + m, li)                      (exp gate; the sigmoid gate keeps m = 0)
    C' = e^{lf + m - m'} C + e^{li - m'} k v^T,   n' = e^{lf + m - m'} n + e^{li - m'} k
    h  = C'^T q^ / (max(|q^ . n'|, e^{-m'}) + eps)    or    e^{m'} C'^T q^
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def step_kernel(q_ptr, k_ptr, v_ptr, li_ptr, lf_ptr, c_ptr, n_ptr, m_ptr, h_ptr, ct_ptr, nt_ptr, mt_ptr,
                scale, eps, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                STABILISE: tl.constexpr, NORMALIZE: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mk, mv = o_k < K, o_v < V
    q = tl.load(q_ptr + i_bh * K + o_k, mask=mk, other=0.0).to(tl.float32) * scale
    k = tl.load(k_ptr + i_bh * K + o_k, mask=mk, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + i_bh * V + o_v, mask=mv, other=0.0).to(tl.float32)
    li, lf, m = tl.load(li_ptr + i_bh), tl.load(lf_ptr + i_bh), tl.load(m_ptr + i_bh)
    offs = i_bh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    mask = mk[:, None] & mv[None, :]
    mem = tl.load(c_ptr + offs, mask=mask, other=0.0)                         # (BK, BV)
    norm = tl.load(n_ptr + i_bh * K + o_k, mask=mk, other=0.0)                # (BK,)
    if STABILISE:
        m_new = tl.maximum(lf + m, li)
        forget, write = tl.exp(lf + m - m_new), tl.exp(li - m_new)
    else:
        m_new, forget, write = m, tl.exp(lf), tl.exp(li)
    mem = forget * mem + write * (k[:, None] * v[None, :])
    norm = forget * norm + write * k
    num = tl.sum(q[:, None] * mem, axis=0)                                    # (BV,)
    if NORMALIZE:
        h = num / (tl.maximum(tl.abs(tl.sum(q * norm, axis=0)), tl.exp(-m_new)) + eps)
    else:
        h = num * tl.exp(m_new)
    tl.store(h_ptr + i_bh * V + o_v, h.to(h_ptr.dtype.element_ty), mask=mv)
    tl.store(ct_ptr + offs, mem, mask=mask)
    if i_v == 0:
        tl.store(nt_ptr + i_bh * K + o_k, norm, mask=mk)
    if i_v == 0:
        tl.store(mt_ptr + i_bh, m_new)


def mlstm_step_triton(q, k, v, li, lf, state, *, stabilise: bool, normalize: bool, eps: float):
    """One token for every (b, h).

    Args:
        q, k: ``[B, H, K]`` (unscaled; q^ = q / sqrt(K) inside); v: ``[B, H, V]``; any float dtype.
        li, lf: log gates ``[B, H]`` float32.
        state: ``(C [B, H, K, V], n [B, H, K], m [B, H])`` float32 (the sigmoid gate's m folded in).
    Returns:
        h ``[B, H, V]`` in q's dtype and the new state (float32).
    """
    B, H, K = q.shape
    V = v.shape[-1]
    q, k, v, li, lf = (x.contiguous() for x in (q, k, v, li, lf))
    mem, norm, m = (x.contiguous() for x in state)
    h = torch.empty(B, H, V, dtype=q.dtype, device=q.device)
    out = torch.empty_like(mem), torch.empty_like(norm), torch.empty_like(m)
    BK = max(16, triton.next_power_of_2(K))
    BV = min(64, max(16, triton.next_power_of_2(V)))
    step_kernel[(triton.cdiv(V, BV), B * H)](q, k, v, li, lf, mem, norm, m, h, *out, K ** -0.5, eps,
                                             K=K, V=V, BK=BK, BV=BV, STABILISE=stabilise, NORMALIZE=normalize)
    return h, out
