"""Packed variable-length batches (FlashAttention convention).

A packed batch has B == 1 and ``cu_seqlens = [0, T_1, T_1 + T_2, ..., T]``
(int tensor [N + 1]). Backends either loop over the sequences
(:func:`per_sequence`, used by the token-loop references) or pad them into a
dense batch ``[N, T_max, ...]`` with values that leave the state untouched
(:func:`pad` / :func:`unpad`, used by the chunkwise backends).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

State = torch.Tensor | tuple[torch.Tensor, ...] | None


def bounds(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """``[(bos, eos), ...]``, one pair per sequence."""
    offsets = cu_seqlens.tolist()
    return list(zip(offsets[:-1], offsets[1:]))


def state_rows(state: State, n: int) -> State:
    """Row ``n`` of a state (a tensor or a tuple of tensors), keeping the leading axis."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s[n : n + 1] for s in state)
    return state[n : n + 1]


def cat_states(states: Sequence[State]) -> State:
    """Concatenate per-sequence states along the leading axis."""
    if not states or states[0] is None:
        return None
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=0) for parts in zip(*states))
    return torch.cat(list(states), dim=0)


def per_sequence(run: Callable, packed: Sequence[torch.Tensor | None], cu_seqlens: torch.Tensor,
                 initial_state: State) -> tuple[torch.Tensor, State]:
    """Run ``run(*slices, initial_state=row)`` on each sequence; concatenate outputs and states.

    ``packed`` holds the time-indexed inputs ``[1, T, ...]`` (None passes through);
    ``run`` returns ``(o [1, T_n, ...], state or None)``.
    """
    outs, states = [], []
    for n, (bos, eos) in enumerate(bounds(cu_seqlens)):
        pieces = [None if x is None else x[:, bos:eos] for x in packed]
        o, s = run(*pieces, initial_state=state_rows(initial_state, n))
        outs.append(o)
        states.append(s)
    return torch.cat(outs, dim=1), cat_states(states)


def _layout(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather index ``[N, T_max]`` into the packed axis and the mask of real tokens."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    t_max = int(lengths.max())
    steps = torch.arange(t_max, device=cu_seqlens.device)
    mask = steps[None, :] < lengths[:, None]
    index = torch.where(mask, cu_seqlens[:-1, None] + steps[None, :], 0)
    return index.long(), mask


def pad(x: torch.Tensor | None, cu_seqlens: torch.Tensor, value: float = 0.0) -> torch.Tensor | None:
    """``[1, T, ...]`` packed -> ``[N, T_max, ...]``, each sequence padded at its end with ``value``."""
    if x is None:
        return None
    index, mask = _layout(cu_seqlens)
    out = x[0][index]                                         # (N, T_max, ...)
    keep = mask.view(*mask.shape, *([1] * (x.dim() - 2)))
    return torch.where(keep, out, torch.full((), value, dtype=x.dtype, device=x.device))


def unpad(y: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``[N, T_max, ...]`` -> ``[1, T, ...]``: the inverse of :func:`pad` on the real tokens."""
    _, mask = _layout(cu_seqlens)
    return y[mask].unsqueeze(0)
