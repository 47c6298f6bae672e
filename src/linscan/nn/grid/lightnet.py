"""LightNet attention (Qin et al. 2024; MATH.md section 8.1): one additive scan for any number of dimensions.

Each key channel keeps a softmax-weighted mean of the values (``linscan.ops.additive``). On a
sequence the mean runs over the prefix (a decay scan, with a decode state); on a grid it runs
over all cells, which is one reduction: the grid can be flattened in any order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import checks, decay_scan
from ...ops.additive import additive_keys, noncausal_readout
from .. import sequence
from ..norms import RMSNorm
from ..positional import grid_positions, lrpe_theta, md_lrpe
from ..rotary import token_positions


class LightNetAttention(nn.Module):
    """``q = SiLU(W_q x)``, ``k = W_k x``, ``v = W_v x`` per head; softmax-over-positions keys
    ``k~``; MD-LRPE on q and k~; ``o = S^T (scale q')``; ``y = W_o RMSNorm_h(o)``.

    Sequences ``[B, T, d_model]`` are causal (row c of S_t is the mean of v_s, s <= t, weighted
    by softmax_{s<=t}(k_{s,c})), positions ``s = (t)``. Grids ``[B, X, Y, d_model]`` (or
    ``[B, X, Y, Z, d_model]``) are non-causal: every cell reads the mean over the whole grid,
    positions ``s = (x, y[, z])``. MD-LRPE doubles the key dim to 2K, so the log-decays of the
    causal scan repeat twice; ``scale = 1 / sqrt(2 K)``.

    Args:
        d_model: model width; n_heads: H.
        head_dim: K = V per head (default d_model // H).
        layer_idx: position in the stack (unused, part of the mixer interface).
        base: MD-LRPE's wavelength base (``theta_i = base^(-2 i / K)``).
        eps: the output norm's epsilon.

    State (sequences): ``{"S": [N, H, 2K, V], "z": [N, H, K], "pos": [N] int64}``: the rotated
    weighted means, the keys' log-normaliser, the tokens seen. Grids take and return no state.
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 base: float = 10000.0, eps: float = 1e-6):
        super().__init__()
        self.n_heads, self.head_dim, self.layer_idx = n_heads, head_dim or d_model // n_heads, layer_idx
        self.base, self.scale = base, (2 * self.head_dim) ** -0.5
        H, K = n_heads, self.head_dim
        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        self.k_proj = nn.Linear(d_model, H * K, bias=False)
        self.v_proj = nn.Linear(d_model, H * K, bias=False)
        self.norm = RMSNorm(K, eps=eps)
        self.o_proj = nn.Linear(H * K, d_model, bias=False)

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` (causal) or ``[B, *grid, d_model]`` with 2 or 3 grid axes
        (non-causal) -> ``(y, new_state)``, y shaped as x; new_state None for grids."""
        checks.expect_floating(x, "x")
        if sequence.group_of(self) is not None:
            raise ValueError("LightNetAttention: sequence parallelism is not supported "
                             "(the keys' softmax normaliser spans the whole sequence)")
        if x.dim() == 3:
            return self._sequence(x, state, cu_seqlens)
        if x.dim() not in (4, 5):
            raise ValueError(f"x: expected [B, T, d_model], [B, X, Y, d_model] or [B, X, Y, Z, d_model], "
                             f"got {x.dim()} dims {list(x.shape)}")
        if state is not None or cu_seqlens is not None:
            raise ValueError("state, cu_seqlens: expected None for grid inputs (the non-causal form "
                             f"reads the whole grid), got x of shape {list(x.shape)}")
        return self._grid(x), None

    def _heads(self, x: torch.Tensor):
        """x ``[B, L, d_model]`` -> q, k, v ``[B, L, H, K]`` (q through SiLU, raw k)."""
        B, L, _ = x.shape
        H, K = self.n_heads, self.head_dim
        q = F.silu(self.q_proj(x)).view(B, L, H, K)
        return q, self.k_proj(x).view(B, L, H, K), self.v_proj(x).view(B, L, H, K)

    def _lrpe(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``[B, L, H, K]`` -> ``[B, L, H, 2K]`` (positions ``[(B,) L, k]``)."""
        theta = lrpe_theta(self.head_dim, positions.shape[-1], base=self.base,
                           dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        return md_lrpe(x, positions, theta)

    def _sequence(self, x: torch.Tensor, state: dict | None, cu_seqlens: torch.Tensor | None):
        """The causal layer on ``[B, T, d_model]``, resuming from ``state``."""
        B, T, _ = x.shape
        q, k, v = self._heads(x)                                              # (B, T, H, K)
        k_tilde, g, z = additive_keys(k, causal=True, initial_z=None if state is None else state["z"],
                                      cu_seqlens=cu_seqlens)
        pos0 = None if state is None else state["pos"]
        positions = token_positions(pos0, B, T, cu_seqlens, device=x.device)[..., None]   # (B, T, 1)
        o, S = decay_scan(self._lrpe(q, positions), self._lrpe(k_tilde, positions), v,
                          torch.cat([g, g], dim=-1), scale=self.scale,     # (B, T, H, 2K) decays
                          initial_state=None if state is None else state["S"],
                          output_final_state=True, cu_seqlens=cu_seqlens)
        lengths = torch.full((B,), T, device=x.device) if cu_seqlens is None else cu_seqlens.diff()
        pos = lengths.long() if pos0 is None else pos0 + lengths
        y = self.o_proj(self.norm(o).reshape(B, T, -1))                       # (B, T, d_model)
        return y, {"S": S, "z": z, "pos": pos}

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """The non-causal layer on ``[B, *grid, d_model]``, flattened row-major (any order would do)."""
        B, *grid, d = x.shape
        q, k, v = self._heads(x.reshape(B, -1, d))                            # (B, L, H, K)
        k_tilde, _, _ = additive_keys(k, causal=False)
        positions = grid_positions(grid, device=x.device)                     # (L, len(grid))
        o, _ = noncausal_readout(self._lrpe(q, positions), self._lrpe(k_tilde, positions), v,
                                 scale=self.scale)                            # (B, L, H, K)
        return self.o_proj(self.norm(o).flatten(-2)).view(B, *grid, d)
