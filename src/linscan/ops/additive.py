"""LightNet's additive recurrence (Qin et al. 2024; MATH.md section 8.1) as a decay scan.

Every key channel c keeps a softmax-weighted mean of the values over the positions seen:

    row c of S_t = sum_{s<=t} softmax_{s<=t}(k_{., c})_s v_s,        o_t = S_t^T (scale q_t)

With the running log-normaliser z_t = log sum_{s<=t} e^{k_s} (per channel) this is exactly
``decay_scan`` with normalised keys k~_t = e^{k_t - z_t} <= 1 and log-decays
g_t = z_{t-1} - z_t <= 0: no exponent ever exceeds 0, however large k is, and the
normaliser is a log-cumsum-exp in (at least) float32. The non-causal form reads the mean over
all positions from every position, O = Q (softmax_T(K)^T V): one reduction, the same under any
flattening of a grid.

The state is the pair ``(S, z)``: ``S [N, H, K, V]`` the weighted means and ``z [N, H, K]`` the
log-normaliser of the positions they cover. Carrying z is what lets a later chunk (or a decode
step) re-weight the old mean against new keys: S' = e^{z - z'} S + e^{k - z'} v^T.
"""

from __future__ import annotations

import torch

from . import checks, varlen
from .decay import decay_scan
from .dtypes import compute_dtype


def additive_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                  scale: float | None = None, initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
                  output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
                  backend: str = "auto"):
    """LightNet's additive linear recurrence (MATH.md section 8.1).

        causal:      o_t = S_t^T (scale q_t),  row c of S_t = sum_{s<=t} softmax_{s<=t}(k_{.,c})_s v_s
        non-causal:  o_t = S_T^T (scale q_t)   (every position reads the mean over all positions)

    An initial state ``(S_0, z_0)`` stands for earlier positions: they join every softmax with
    total weight e^{z_0} (their mean S_0), exactly as if they had been part of the input.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (same dtype and device). k are the raw
            logits of the softmax over positions (no activation).
        causal: the running mean (a ``decay_scan``), or the mean over all positions.
        scale: multiplies q; default ``1 / sqrt(K)``.
        initial_state: ``(S [N, H, K, V], z [N, H, K])`` (see Returns); N = B, or the number
            of sequences with ``cu_seqlens``. Default: no earlier positions.
        output_final_state: also return the state after the last position.
        cu_seqlens: int ``[N + 1]`` offsets of a packed batch (B must be 1); each sequence
            has its own softmax and state.
        backend: ``decay_scan``'s backend for the causal form (``"auto"``, ``"naive"``,
            ``"chunk"``, ...); the non-causal form is two matrix products and ignores it.

    Returns:
        o ``[B, T, H, V]`` in q's dtype, and the final state ``(S [N, H, K, V], z [N, H, K])``
        in float32 (float64 for float64 inputs), or None unless ``output_final_state``:
        S the softmax-weighted means of the values, z = log sum_s e^{k_s} over every position
        they cover (the initial state's included).
    """
    dims = checks.check_qkv(q, k, v)
    N = checks.check_cu_seqlens(cu_seqlens, dims, q.device)
    S0, z0 = _check_state(initial_state, (N, dims.H, dims.K, dims.V), q.device)
    scale = checks.check_scale(scale, dims.K)
    k_tilde, g, z = additive_keys(k, causal=causal, initial_z=z0, cu_seqlens=cu_seqlens)
    if causal:
        o, S = decay_scan(q, k_tilde, v, g, scale=scale, initial_state=S0,
                          output_final_state=output_final_state, cu_seqlens=cu_seqlens, backend=backend)
    else:
        # the earlier positions' mean keeps the share e^{z_0 - z} of the new normaliser
        old = None if S0 is None else S0.to(z.dtype) * (z0.to(z.dtype) - z).exp()[..., None]
        o, S = noncausal_readout(q, k_tilde, v, scale=scale, initial_state=old, cu_seqlens=cu_seqlens)
    return o, ((S, z) if output_final_state else None)


def additive_keys(k: torch.Tensor, *, causal: bool = True, initial_z: torch.Tensor | None = None,
                  cu_seqlens: torch.Tensor | None = None):
    """The normalised keys, log-decays and final log-normaliser of the additive recurrence.

        causal:      z_t = log(e^{z_0} + sum_{s<=t} e^{k_s}),  k~_t = e^{k_t - z_t},  g_t = z_{t-1} - z_t
        non-causal:  z = log(e^{z_0} + sum_s e^{k_s}),         k~_t = e^{k_t - z}

    Layers that transform k~ before the scan (LightNet's MD-LRPE) call this and then
    ``decay_scan`` / :func:`noncausal_readout` themselves.

    Args:
        k: raw keys ``[B, T, H, K]``.
        causal: per-prefix normaliser (and log-decays) or one over all positions.
        initial_z: ``[N, H, K]`` log-normaliser of earlier positions; default none
            (the first causal g is then 0, which is harmless: the state it decays is zero).
        cu_seqlens: int ``[N + 1]`` offsets of a packed batch (B == 1), one softmax per sequence.

    Returns:
        ``(k_tilde [B, T, H, K] in k's dtype, g [B, T, H, K] <= 0 or None when not causal,
        z [N, H, K])``; g and z in float32 (float64 for float64 k).
    """
    kf = k.to(compute_dtype(k))
    # 1. one row per sequence: (N, T_max, H, K), padded with -inf (no weight, no normaliser change)
    rows = kf if cu_seqlens is None else varlen.pad(kf, cu_seqlens, value=float("-inf"))
    # 2. the log-normalisers, earlier positions included
    z = rows.logcumsumexp(dim=1) if causal else rows.logsumexp(dim=1, keepdim=True)
    if initial_z is not None:
        z = torch.logaddexp(z, initial_z.to(z.dtype)[:, None])
    k_tilde = (rows - z).exp()                                       # (N, T_max, H, K)
    g = None
    if causal:
        # z_0 = z_1 without earlier positions; clamp: logaddexp can round z_t a hair below z_{t-1}
        first = z[:, :1] if initial_z is None else initial_z.to(z.dtype)[:, None]
        g = (torch.cat([first, z[:, :-1]], dim=1) - z).clamp(max=0.0)   # (N, T_max, H, K)
    if cu_seqlens is not None:
        k_tilde = varlen.unpad(k_tilde, cu_seqlens)
        g = None if g is None else varlen.unpad(g, cu_seqlens)
    return k_tilde.to(k.dtype), g, z[:, -1]


def noncausal_readout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                      initial_state: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None):
    """Linear attention without a mask: ``S = S_0 + sum_s k_s v_s^T``, ``o_t = S^T (scale q_t)``.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (k already normalised, e.g. by
            :func:`additive_keys` with ``causal=False``).
        scale: multiplies q.
        initial_state: ``[N, H, K, V]`` added to S (already weighted); default zeros.
        cu_seqlens: int ``[N + 1]`` offsets of a packed batch (B == 1), one S per sequence.

    Returns:
        o ``[B, T, H, V]`` in q's dtype and S ``[N, H, K, V]`` in float32 (float64 for float64 q).
    """
    dtype = compute_dtype(q)
    # (B, T, H, *) -> (N, T_max, H, *): zero padding writes nothing and reads nothing kept
    qs, ks, vs = (x.to(dtype) if cu_seqlens is None else varlen.pad(x.to(dtype), cu_seqlens) for x in (q, k, v))
    S = torch.einsum("nthk,nthv->nhkv", ks, vs)                      # (N, H, K, V)
    if initial_state is not None:
        S = S + initial_state.to(dtype)
    o = torch.einsum("nthk,nhkv->nthv", qs * scale, S)                # (N, T_max, H, V)
    o = o if cu_seqlens is None else varlen.unpad(o, cu_seqlens)
    return o.to(q.dtype), S


def _check_state(state, sizes: tuple[int, int, int, int], device: torch.device):
    """``(S [N, H, K, V], z [N, H, K])`` or None -> (S, z); (None, None) without one."""
    if state is None:
        return None, None
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(f"initial_state: expected a pair (S [N, H, K, V], z [N, H, K]) or None, "
                        f"got {type(state).__name__}")
    S, z = state
    checks.expect_floating(S, "initial_state[0] (S)")
    checks.expect_floating(z, "initial_state[1] (z)")
    checks.check_state(S, "initial_state[0] (S)", "N H K V", sizes, device)
    checks.check_state(z, "initial_state[1] (z)", "N H K", sizes[:3], device)
    return S, z
