"""SwiGLU feed-forward block (Shazeer 2020): ``W_down(silu(W_gate x) * W_up x)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """Gated MLP with a SiLU gate.

    Args:
        d_model: input and output width.
        hidden_dim: inner width; default 8/3 * d_model (same parameters as a 4x GELU MLP),
            rounded up to a multiple of ``multiple_of``.
        multiple_of: rounding of the default inner width.
        bias: biases on the three projections.
    """

    def __init__(self, d_model: int, hidden_dim: int | None = None, *, multiple_of: int = 32,
                 bias: bool = False):
        super().__init__()
        if hidden_dim is None:
            hidden_dim = multiple_of * -(-(8 * d_model) // (3 * multiple_of))
        self.hidden_dim = hidden_dim
        self.gate_proj = nn.Linear(d_model, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(d_model, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., d_model]`` -> ``[..., d_model]``."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
