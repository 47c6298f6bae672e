"""Long inputs as segments of whole chunks that carry the state.

The arithmetic is the same as one pass (segments are whole chunks), but each
segment's temporaries and backward graph stay cache-sized, so time and peak
memory grow linearly in T instead of with the size of the biggest temporary.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

SEGMENT_TOKENS = 4096


def segment_length(C: int, tokens: int = SEGMENT_TOKENS) -> int:
    """The largest multiple of the chunk length C that is at most ``tokens`` (at least C)."""
    return max(C, tokens // C * C)


def run_segments(run: Callable, inputs: Sequence[torch.Tensor | None], state, step: int):
    """``run(*pieces, state) -> (o, state)`` over consecutive pieces of ``step`` tokens (axis 1).

    Returns the outputs concatenated along time and the final state.
    """
    T = next(x for x in inputs if x is not None).shape[1]
    n = -(-T // step)
    pieces = [[None] * n if x is None else x.split(step, dim=1) for x in inputs]
    outs = []
    for piece in zip(*pieces):
        o, state = run(*piece, state)
        outs.append(o)
    return torch.cat(outs, dim=1), state
