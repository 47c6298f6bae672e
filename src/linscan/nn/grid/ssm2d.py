"""Chimera-style 2-D SSM layer for multivariate time series (Behrouz et al. 2024; MATH.md section 8.4).

A series of V variates over T steps is a T x V grid: time is the op's X axis,
variates its Y axis. The layer is selective (B, C and both step sizes read the
input at every cell) and runs the 2-D recurrence twice, once over the variates in
order and once in reverse (the paper's forward and backward modules: variates have
no natural order), with separate parameters per direction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.grid.ssm2d import FORMS, discretize, ssm2d
from ..norms import GatedRMSNorm


class SSM2DDirection(nn.Module):
    """The selective parameters of one pass (one variate direction) and its scan.

    Per cell, from the input u ``[..., H * P]``: ``B1, B2, C1, C2 = W u`` ``[..., H, N]`` and
    ``dt_i = softplus(W_dt u + dt_bias_i)`` ``[..., H]`` (softplus: Mamba's choice, **unverified**
    for Chimera). Continuous ``A1 = -exp(A_log[0])``, ``A4 = -exp(A_log[1])`` ``[H, N]``
    (negative; Mamba's S4D-real init ``A = -(1, 2, ..., N)``); cross blocks A2, A3 ``[H, N]``
    start small (``N(0, cross_init^2)``) and are not constrained (see MATH.md's stability note).
    Skip ``D [H]`` starts at 1.
    """

    def __init__(self, d_inner: int, n_heads: int, state_size: int, *, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, cross_init: float = 1e-2):
        super().__init__()
        H, N = n_heads, state_size
        self.n_heads, self.state_size = H, N
        self.proj = nn.Linear(d_inner, 4 * H * N + 2 * H, bias=False)   # B1, B2, C1, C2, dt1, dt2
        # dt log-uniform in [dt_min, dt_max] after softplus, one row per axis (time, variate)
        dt = torch.exp(torch.empty(2, H).uniform_(math.log(dt_min), math.log(dt_max)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))    # softplus^{-1}(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(2, H, 1))
        self.cross = nn.Parameter(cross_init * torch.randn(2, H, N))      # A2, A3
        self.D = nn.Parameter(torch.ones(H))

    def forward(self, u: torch.Tensor, *, form: str, reverse_variates: bool) -> torch.Tensor:
        """u ``[B, T, V, H * P]`` -> y ``[B, T, V, H, P]`` in u's dtype (scan in >= float32)."""
        B, T, V, _ = u.shape
        H, N = self.n_heads, self.state_size
        f32 = torch.promote_types(u.dtype, torch.float32)
        params = self.proj(u).to(f32)                                     # (B, T, V, 4 H N + 2 H)
        b1, b2, c1, c2 = params[..., :4 * H * N].view(B, T, V, 4, H, N).unbind(3)  # (B, T, V, H, N)
        dt = F.softplus(params[..., 4 * H * N:].view(B, T, V, 2, H) + self.dt_bias.to(f32))  # (B, T, V, 2, H)
        a1, a4 = -torch.exp(self.A_log.to(f32))                           # (H, N) each
        a2, a3 = self.cross.to(f32)
        coefficients = discretize(a1, a2, a3, a4, b1, b2, dt[..., 0, :], dt[..., 1, :])
        x = u.to(f32).view(B, T, V, H, -1)                                # (B, T, V, H, P)
        y = ssm2d(x, *coefficients, c1, c2, self.D.to(f32), form=form, reverse_variates=reverse_variates)
        return y.to(u.dtype)


class SSM2D(nn.Module):
    """2-D selective SSM mixer over (time, variate): ``x [B, T, V, d_model] -> y [B, T, V, d_model]``.

        u, z = W_in x                       (each [B, T, V, d_inner], d_inner = expand * d_model)
        u = silu(u)
        s = SSM2D_fwd(u) + SSM2D_bwd(u)     (variates in order / reversed, separate parameters)
        y = W_o(RMSNorm(s) * silu(z))

    The two passes are summed, then gated by silu(z) (Mamba's output gate) after a
    gated RMSNorm over d_inner. Causal in time; each output cell sees every variate
    (only the earlier ones with ``bidirectional=False``). No short convolution.

    Args:
        d_model: model width; n_heads: H (must divide d_inner).
        state_size: N per channel for each of h1, h2.
        expand: d_inner / d_model.
        form: ``"cell"`` (the paper's form) or ``"roesser"`` (edge form); see
            :func:`linscan.ops.grid.ssm2d.ssm2d`.
        bidirectional: add the reversed-variate pass.
        dt_min, dt_max, cross_init: initialisation of the step sizes and cross blocks.
    """

    def __init__(self, d_model: int, n_heads: int, *, state_size: int = 16, expand: int = 2,
                 form: str = "cell", bidirectional: bool = True, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, cross_init: float = 1e-2):
        super().__init__()
        d_inner = expand * d_model
        if n_heads < 1 or d_inner % n_heads:
            raise ValueError(f"n_heads: expected a positive divisor of d_inner = expand * d_model = {d_inner}, "
                             f"got {n_heads}")
        if form not in FORMS:
            raise ValueError(f"form: expected one of {list(FORMS)}, got {form!r}")
        self.form, self.d_inner = form, d_inner
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.directions = nn.ModuleList(
            SSM2DDirection(d_inner, n_heads, state_size, dt_min=dt_min, dt_max=dt_max, cross_init=cross_init)
            for _ in range(2 if bidirectional else 1))
        self.norm = GatedRMSNorm(d_inner, activation="silu")
        self.o_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, T, V, d_model]`` -> y ``[B, T, V, d_model]`` in x's dtype."""
        if x.dim() != 4:
            raise ValueError(f"x: expected 4 dims [B, T, V, d_model], got {x.dim()} dims {list(x.shape)}")
        B, T, V, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)                           # (B, T, V, d_inner) each
        u = F.silu(u)
        s = sum(direction(u, form=self.form, reverse_variates=bool(i))
                for i, direction in enumerate(self.directions))          # (B, T, V, H, P)
        return self.o_proj(self.norm(s.reshape(B, T, V, self.d_inner), z))
