"""The three transition structures of a linear scan, in one canonical layout.

Backends see either

    diagonal:  a [B, T, D],        b [B, T, D],       h [B, D]
    blocks:    a [B, T, G, k, k],  b [B, T, G, k],    h [B, G, k]

where dense A is the single block G = 1, k = D. Every helper takes ``diag``
(a.dim() == b.dim()) so the arithmetic reads the same for both.
"""

from __future__ import annotations

import torch


def canonical(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, dtype: torch.dtype):
    """Public layout -> canonical layout in ``dtype``: returns (a, b, h0); h0 may be None."""
    if a.dim() == 4:
        a = a[:, :, None]                                      # (B, T, 1, D, D)
    if a.dim() == 5:
        k = a.shape[-1]
        b = b.unflatten(-1, (-1, k))                           # (B, T, G, k)
        h0 = None if h0 is None else h0.unflatten(-1, (-1, k))  # (B, G, k)
    return a.to(dtype), b.to(dtype), (None if h0 is None else h0.to(dtype))


def apply(a: torch.Tensor, h: torch.Tensor, diag: bool) -> torch.Tensor:
    """A h:  (..., D) * (..., D)  or  (..., G, k, k) @ (..., G, k)."""
    return a * h if diag else (a @ h[..., None])[..., 0]


def compose(a2: torch.Tensor, a1: torch.Tensor, diag: bool) -> torch.Tensor:
    """A2 A1 (apply A1 first)."""
    return a2 * a1 if diag else a2 @ a1


def transpose(a: torch.Tensor, diag: bool) -> torch.Tensor:
    return a if diag else a.transpose(-1, -2)


def outer(lam: torch.Tensor, h: torch.Tensor, diag: bool) -> torch.Tensor:
    """dL/dA for A h given dL/d(A h) = lam: elementwise (diagonal) or lam h^T (blocks)."""
    return lam * h if diag else lam[..., :, None] * h[..., None, :]
