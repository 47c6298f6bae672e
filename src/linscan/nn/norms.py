"""RMSNorm and gated RMSNorm (``norm(o) * act(gate)``), computed in at least float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"silu": F.silu, "sigmoid": torch.sigmoid}


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last axis.

    Args:
        dim: size of the last axis.
        eps: added to the mean square.
        affine: learn a per-channel weight (initialised to ones).
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., dim]`` -> same shape and dtype."""
        # half-precision mean squares lose the small channels: normalise in float32 (or float64)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        return y.to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """``RMSNorm(x) * act(gate)``: the output norm and gate of GLA, RetNet, Gated DeltaNet, ...

    Args:
        dim: size of the last axis.
        eps: added to the mean square.
        activation: ``"silu"`` (swish gate) or ``"sigmoid"``.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, activation: str = "silu"):
        super().__init__(dim, eps=eps)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """x, gate ``[..., dim]`` -> ``[..., dim]`` in x's dtype."""
        return super().forward(x) * ACTIVATIONS[self.activation](gate).to(x.dtype)
