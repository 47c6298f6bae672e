"""Rotary position embedding (Su et al. 2021), half-split layout, with position offsets."""

from __future__ import annotations

import torch
from torch import nn


def token_positions(offset: torch.Tensor | None, B: int, T: int, cu_seqlens: torch.Tensor | None = None,
                    device: torch.device | None = None) -> torch.Tensor:
    """Absolute position of every token, ``[B, T]`` int64.

    ``offset``: ``[N]`` tokens already seen per sequence (None: zeros); N = B, or the
    number of sequences of the packed batch ``cu_seqlens`` (B == 1), whose positions
    restart at each sequence's offset.
    """
    steps = torch.arange(T, device=device)  # (T,)
    if cu_seqlens is None:
        base = torch.zeros(B, 1, dtype=torch.long, device=device) if offset is None else offset[:, None]
        return steps[None, :] + base  # (B, T)
    cu = cu_seqlens.long()
    seq = torch.searchsorted(cu[1:], steps, right=True)  # (T,) sequence of each token
    pos = steps - cu[seq]
    if offset is not None:
        pos = pos + offset[seq]
    return pos[None, :].long()  # (1, T)


class RotaryEmbedding(nn.Module):
    """Rotate channel pairs (i, i + D/2) by angle ``pos * base^(-2i/D)``.

    Args:
        dim: head dim D (even).
        base: wavelength base.
    """

    def __init__(self, dim: int, *, base: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim: expected an even head dim, got {dim}")
        self.dim, self.base = dim, base

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x ``[B, T, H, D]``, positions ``[B, T]`` or ``[T]`` (int) -> rotated x, same dtype."""
        # frequencies are recomputed rather than kept in a buffer that .to(bfloat16) would round
        dtype = torch.promote_types(x.dtype, torch.float32)
        inv_freq = self.base ** (-torch.arange(0, self.dim, 2, device=x.device, dtype=dtype) / self.dim)
        angles = positions.to(dtype)[..., None] * inv_freq  # (B, T, D/2)
        cos, sin = angles.cos()[..., None, :], angles.sin()[..., None, :]  # (B, T, 1, D/2)
        x1, x2 = x.to(dtype).chunk(2, dim=-1)  # (B, T, H, D/2) each
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
