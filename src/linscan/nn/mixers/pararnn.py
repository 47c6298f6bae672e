"""Nonlinear RNN mixers trained in parallel over time by Newton iterations (ParaRNN, AL-RNN).

The cells of :mod:`linscan.pararnn` as sequence mixers: ``h = newton_rnn(cell, x, h0)``
over the whole sequence (one linear scan per Newton step, an adjoint scan for the
backward), ``h_t = cell.step(h_{t-1}, x_t)`` when decoding, and ``y = W_o out(h)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...ops.varlen import bounds
from ...pararnn import ALRNN, ParaGRU, ParaLSTMCIFG, newton_rnn
from ..init import keep_init


class _NewtonMixer(nn.Module):
    """Base: runs ``self.cell`` (a NewtonCell fed with x) and projects ``self.readout(h)``.

    Newton stops once max|F| < ``newton_tol`` (default ``100 * eps`` of the compute
    dtype: 2.2e-14 in float64, 1.2e-5 in float32), after at most ``newton_iters``
    steps, and falls back to the sequential loop if it has not converged, so the
    result is the recurrence's whatever the weights. Half-precision inputs run the
    cell in float32 (Newton needs the accuracy).

    State: ``{"h": [N, M]}`` (M = the cell's state size).
    """

    def __init__(self, cell: nn.Module, out_size: int, d_model: int, newton_iters: int, newton_tol: float | None):
        super().__init__()
        if newton_iters < 0:
            raise ValueError(f"newton_iters: expected >= 0, got {newton_iters}")
        if newton_tol is not None and not newton_tol > 0:
            raise ValueError(f"newton_tol: expected None or > 0, got {newton_tol}")
        self.cell, self.newton_iters, self.newton_tol = cell, newton_iters, newton_tol
        self.o_proj = nn.Linear(out_size, d_model, bias=False)
        keep_init(cell)  # the cell's own init keeps Newton's iterations converging

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], {"h": [N, M]})``."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        h0 = None if state is None else state["h"].to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            xs = x.to(dtype)
            if cu_seqlens is None:
                h = self._run(xs, h0)
                last = h[:, -1]
            else:                                                  # one solve per packed sequence
                pieces = [self._run(xs[:, a:b], None if h0 is None else h0[n : n + 1])
                          for n, (a, b) in enumerate(bounds(cu_seqlens))]
                h, last = torch.cat(pieces, dim=1), torch.cat([p[:, -1] for p in pieces])
            y = self.o_proj(self.readout(h).to(self.o_proj.weight.dtype))
        return y.to(x.dtype), {"h": last}

    def _run(self, x: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
        if h0 is None:
            h0 = x.new_zeros(x.shape[0], self.cell.state_size)
        if x.shape[1] == 1:                                        # decode: one step, no Newton
            return self.cell.step(h0, x[:, 0])[:, None]
        tol = self.newton_tol or 100 * torch.finfo(x.dtype).eps
        return newton_rnn(self.cell, x, h0, max_iters=self.newton_iters, tol=tol, fallback=True)


class ParaGRUMixer(_NewtonMixer):
    """ParaGRU (diagonal recurrence, MATH.md section 4) as a mixer: hidden size ``d_model``
    (or ``hidden_size``); n_heads and head_dim are not used."""

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 hidden_size: int | None = None, newton_iters: int = 8, newton_tol: float | None = None):
        M = hidden_size or d_model
        super().__init__(ParaGRU(d_model, M), M, d_model, newton_iters, newton_tol)


class ParaLSTMMixer(_NewtonMixer):
    """ParaLSTM-CIFG (2 x 2 blocks per channel) as a mixer; the output reads the h half of the
    interleaved state [c_0, h_0, c_1, h_1, ...]. n_heads and head_dim are not used."""

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 hidden_size: int | None = None, newton_iters: int = 8, newton_tol: float | None = None):
        D = hidden_size or d_model
        super().__init__(ParaLSTMCIFG(d_model, D), D, d_model, newton_iters, newton_tol)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return h[..., 1::2]                                        # (..., D): the h entries


class ALRNNMixer(_NewtonMixer):
    """AL-RNN (dense Jacobian, so keep ``state_size`` M small: each Newton step scans M x M
    matrices) with ReLU on ``relu_units`` of the M units. n_heads and head_dim are not used."""

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 state_size: int = 32, relu_units: int | None = None, newton_iters: int = 8,
                 newton_tol: float | None = None):
        P = state_size // 4 if relu_units is None else relu_units
        super().__init__(ALRNN(d_model, state_size, P), state_size, d_model, newton_iters, newton_tol)
