"""Causal depthwise short convolution over time, with a decode state and packed sequences."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import varlen
from . import sequence


class ShortConv(nn.Module):
    """``y_t = act(sum_j w_j * x_{t - W + 1 + j} + b)`` per channel, W = ``kernel_size``.

    The state holds the last W - 1 inputs of each sequence, ``[N, D, W - 1]`` (zeros
    before the start), so decoding one token at a time equals the full convolution.

    Args:
        dim: channels D.
        kernel_size: W (4 in Mamba, DeltaNet, xLSTM).
        activation: ``"silu"`` or None.
        bias: learn a per-channel bias.
    """

    def __init__(self, dim: int, kernel_size: int = 4, *, activation: str | None = "silu",
                 bias: bool = False):
        super().__init__()
        if activation not in ("silu", None):
            raise ValueError(f"activation: expected 'silu' or None, got {activation!r}")
        self.dim, self.kernel_size, self.activation = dim, kernel_size, activation
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=bias)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolve ``x [B, T, D]``; return ``(y [B, T, D], new_state [N, D, W - 1])``.

        ``state``: ``[N, D, W - 1]`` or None (zeros); N = B, or the number of sequences
        of the packed batch ``cu_seqlens`` (B == 1), each of which starts from its own row.
        """
        B, T, D = x.shape
        if cu_seqlens is None:
            xs, lengths = x, torch.full((B,), T, device=x.device)  # (N, T, D)
        else:
            # padding sits after each sequence's end, so a causal kernel never reads it
            xs, lengths = varlen.pad(x, cu_seqlens), cu_seqlens[1:] - cu_seqlens[:-1]  # (N, T_max, D)
        N, W = xs.shape[0], self.kernel_size
        if state is None and sequence.group_of(self) is not None:
            state = self._halo(x)                                  # the previous rank's last inputs
        if state is None:
            state = xs.new_zeros(N, D, W - 1)
        full = torch.cat([state.to(xs.dtype), xs.transpose(1, 2)], dim=2)  # (N, D, W - 1 + T)
        if T == 1 and cu_seqlens is None:
            # decode step: one window per channel; a dot product is ~50x cheaper than conv1d here
            y = (full * self.conv.weight[:, 0]).sum(-1)[:, None, :]  # (N, 1, D)
            y = y if self.conv.bias is None else y + self.conv.bias
        else:
            y = F.conv1d(full, self.conv.weight, self.conv.bias, groups=D).transpose(1, 2)  # (N, T, D)
        if self.activation == "silu":
            y = F.silu(y)
        # the last W - 1 real inputs of each sequence sit at columns len .. len + W - 2 of `full`
        cols = lengths.long()[:, None] + torch.arange(W - 1, device=x.device)  # (N, W - 1)
        new_state = full.gather(2, cols[:, None, :].expand(N, D, W - 1))  # (N, D, W - 1)
        if cu_seqlens is not None:
            y = varlen.unpad(y, cu_seqlens)  # (1, T, D)
        return y, new_state

    def _halo(self, x: torch.Tensor) -> torch.Tensor:
        """Under sequence parallelism: the previous rank's last W - 1 inputs ``[B, D, W - 1]``."""
        from ..parallel.halo import previous_tail

        n = self.kernel_size - 1
        if x.shape[1] < n:
            raise ValueError(f"x: expected at least kernel_size - 1 = {n} tokens per rank under sequence "
                             f"parallelism, got {x.shape[1]}")
        return previous_tail(x[:, x.shape[1] - n:], sequence.group_of(self)).transpose(1, 2)


class ShortConvs(nn.ModuleDict):
    """One ``ShortConv`` per named projection (``q``, ``k``, ``v``...), states kept as
    ``conv_<name>`` entries of the mixer's state dict (parameters ``<name>.conv.weight``).

    ``convs(projections, state, cu_seqlens) -> (convolved, new_state)``: ``projections`` maps
    names to ``[B, T, width]`` tensors; ``state`` is the mixer's state dict (or None).
    """

    def __init__(self, widths: dict[str, int], kernel_size: int = 4, *, activation: str | None = "silu"):
        super().__init__({name: ShortConv(w, kernel_size, activation=activation) for name, w in widths.items()})

    def forward(self, projections: dict[str, torch.Tensor], state: dict | None,
                cu_seqlens: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        out, new_state = {}, {}
        for name, x in projections.items():
            out[name], new_state[f"conv_{name}"] = self[name](x, (state or {}).get(f"conv_{name}"), cu_seqlens)
        return out, new_state
