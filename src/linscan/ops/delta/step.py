"""One token of the delta rule: the decode step and the body of the reference loop.

    S <- a_t S;   for j = 1..R:  S <- (I - beta_j k_j k_j^T) S + beta_j k_j v_j^T
    o_t = S^T q_t                                           (q already scaled)

R = 1 is DeltaNet / Gated DeltaNet, R > 1 DeltaProduct (MATH.md section 2).
"""

from __future__ import annotations

import torch


def delta_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               g: torch.Tensor | None, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance ``state`` by one token of R Householder sub-steps.

    Args:
        q: ``[B, H, K]`` (already scaled); k: ``[B, R, H, K]``; v: ``[B, R, H, V]``;
        beta: ``[B, R, H]``; g: None or the log-decay ``[B, H]``; state: ``[B, H, K, V]``.
    Returns:
        o ``[B, H, V]`` and the new state ``[B, H, K, V]``.
    """
    if g is not None:
        state = state * g.exp()[..., None, None]
    for j in range(k.shape[1]):
        state = householder_step(k[:, j], v[:, j], beta[:, j], state)
    o = torch.einsum("bhk,bhkv->bhv", q, state)
    return o, state


def householder_step(k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                     state: torch.Tensor) -> torch.Tensor:
    """``(I - beta k k^T) S + beta k v^T``, written as ``S + beta k (v - S^T k)^T``.

    k: ``[B, H, K]``; v: ``[B, H, V]``; beta: ``[B, H]``; state: ``[B, H, K, V]``.
    """
    error = v - torch.einsum("bhk,bhkv->bhv", k, state)          # (B, H, V)
    return state + (beta[..., None] * k)[..., :, None] * error[..., None, :]


def householder_axis(k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor):
    """k, v, beta in the DeltaProduct layout ``[B, T, R, H, *]`` (R = 1 inserted if absent)."""
    if k.dim() == 4:
        return k[:, :, None], v[:, :, None], beta[:, :, None]
    return k, v, beta
