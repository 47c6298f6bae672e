"""One token of the decay recurrence: the decode step and the body of the reference loop.

    S_t = Diag(a_t) S_{t-1} + k_t v_t^T,      o_t = S_t^T q_t      (q already scaled)
"""

from __future__ import annotations

import torch


def decay_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
               state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance ``state`` by one token.

    Args:
        q, k: ``[B, H, K]``; v: ``[B, H, V]``; state: ``[B, H, K, V]``.
        g: None, or a log-decay broadcastable to ``[B, H, K]`` (``[.., H, 1]`` for scalar decay).
    Returns:
        o ``[B, H, V]`` and the new state ``[B, H, K, V]``.
    """
    if g is not None:
        state = state * g.exp()[..., None]
    state = state + k[..., :, None] * v[..., None, :]
    o = torch.einsum("bhk,bhkv->bhv", q, state)
    return o, state


def log_decays(g: torch.Tensor | None, T: int) -> list[torch.Tensor | None]:
    """The log-decay of every token, each shaped to broadcast against ``[B, H, K]``.

    ``g`` is None, ``[H]``, ``[B, T, H]`` or ``[B, T, H, K]``. Uses ``unbind`` (one
    backward for all tokens), not ``g[:, t]`` per token (a full-size zero tensor each).
    """
    if g is None:
        return [None] * T
    if g.dim() == 1:
        return [g[None, :, None]] * T
    if g.dim() == 3:
        return list(g[..., None].unbind(1))
    return list(g.unbind(1))
