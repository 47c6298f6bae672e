"""LightNet's multi-dimensional positional encodings (Qin et al. 2024; MATH.md section 8.1).

- MD-LRPE, a relative encoding applied to queries and (normalised) keys: every channel c turns
  by an angle Theta_c(s) that is linear in the position s = (s_1 .. s_k), and the doubled
  features [x cos Theta_s, x sin Theta_s] give scores sum_c q_c k_c cos(Theta_c(s) - Theta_c(t)).
- MD-TPE, an absolute encoding added once at the input: per grid axis and head a constant-key
  decay recurrence (a causal exponential moving sum along that axis), normalised and projected;
  the axes' outputs are summed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import checks, linear_scan


def lrpe_theta(dim: int, axes: int, *, base: float = 10000.0, dtype: torch.dtype = torch.float32,
               device: torch.device | None = None) -> torch.Tensor:
    """MD-LRPE's per-axis frequencies ``theta_i = base^(-2 i / dim)``, i < e = ceil(dim / axes): ``[e]``."""
    e = math.ceil(dim / axes)
    return base ** (-2.0 * torch.arange(e, dtype=dtype, device=device) / dim)


def grid_positions(sizes, *, device: torch.device | None = None) -> torch.Tensor:
    """Coordinates of every cell of a grid of ``sizes`` (row-major order): ``[prod(sizes), len(sizes)]`` int64."""
    axes = [torch.arange(n, device=device) for n in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


def md_lrpe(x: torch.Tensor, positions: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-dimensional LRPE: ``x' = [x cos Theta_s, x sin Theta_s]``, ``Theta_s = concat_j(s_j theta)[:d]``.

    Applied to q and k alike, ``<q'_s, k'_t> = sum_c q_c k_c cos(Theta_c(s) - Theta_c(t))``: it
    depends on s - t only. Channel c belongs to axis ``c // e`` (e = len(theta)). A token whose
    position is all zeros (a cls token) keeps ``x' = [x, 0]``.

    Args:
        x: ``[B, L, H, d]``.
        positions: ``[L, k]`` or ``[B, L, k]``, the k coordinates of every token (int or float).
        theta: ``[e]`` frequencies with ``e * k >= d``; default :func:`lrpe_theta` ``(d, k)``.

    Returns:
        ``[B, L, H, 2 d]`` in x's dtype (computed in at least float32).
    """
    _check_lrpe(x, positions, theta)
    d, k = x.shape[-1], positions.shape[-1]
    dtype = torch.promote_types(x.dtype, torch.float32)
    if theta is None:
        theta = lrpe_theta(d, k, dtype=dtype, device=x.device)
    angles = (positions.to(dtype)[..., None] * theta.to(dtype)).flatten(-2)[..., :d]  # (B?, L, d)
    cos, sin = angles.cos()[..., None, :], angles.sin()[..., None, :]                  # (B?, L, 1, d)
    xf = x.to(dtype)
    return torch.cat([xf * cos, xf * sin], dim=-1).to(x.dtype)                         # (B, L, H, 2d)


def _check_lrpe(x, positions, theta) -> None:
    checks.expect_floating(x, "x")
    checks.expect_rank(x, "x", "B L H d")
    checks.expect_tensor(positions, "positions")
    B, L, _, d = x.shape
    if positions.dim() == 2:
        checks.expect_shape(positions, "positions", "L k", (L, positions.shape[-1]))
    else:
        checks.expect_rank(positions, "positions", "B L k")
        checks.expect_shape(positions, "positions", "B L k", (B, L, positions.shape[-1]))
    checks.expect_device(positions, "positions", x.device, "x")
    if positions.shape[-1] == 0:
        raise ValueError(f"positions: expected at least one coordinate axis k, got shape {list(positions.shape)}")
    if theta is not None:
        checks.expect_floating(theta, "theta")
        need = math.ceil(d / positions.shape[-1])
        if theta.dim() != 1 or theta.shape[0] < need:
            raise ValueError(f"theta: expected a 1-D tensor [e] with e >= ceil(d / k) = {need}, "
                             f"got shape {list(theta.shape)}")


class MDTPE(nn.Module):
    """Multi-dimensional TPE: ``MD-TPE(x) = sum over grid axes a of W_a GroupRMSNorm_a(o^a)``.

    Along axis a, for head h (channels of width d / H), with ``lambda_h = sigmoid(w_{a,h})`` and
    constant vectors ``q_{a,h}, k_{a,h}``:

        s_i = lambda_h s_{i-1} + k_{a,h} x_i^T
        o^a_i = s_i^T q_{a,h} = (q_{a,h} . k_{a,h}) sum_{j<=i} lambda_h^{i-j} x_j

    (i runs along axis a, the other coordinates fixed): causal per axis, as the reference.
    The group RMSNorm normalises each head's channels. Add the result to the input once.

    Args:
        d_model: d, the channel width; n_heads: H (dividing d).
        n_axes: grid axes of the inputs (1, 2 or 3).
        eps: the norm's epsilon.
    """

    def __init__(self, d_model: int, n_heads: int, n_axes: int, *, eps: float = 1e-6):
        super().__init__()
        if n_axes not in (1, 2, 3):
            raise ValueError(f"n_axes: expected 1, 2 or 3 grid axes, got {n_axes}")
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(f"n_heads: expected a positive divisor of d_model = {d_model}, got {n_heads}")
        self.d_model, self.n_heads, self.n_axes, self.eps = d_model, n_heads, n_axes, eps
        self.decay_logit = nn.Parameter(torch.randn(n_axes, n_heads))   # w: lambda = sigmoid(w)
        self.q = nn.Parameter(torch.randn(n_axes, d_model))             # q_{a,h} = q[a, head h's channels]
        self.k = nn.Parameter(torch.randn(n_axes, d_model))
        self.norm_weight = nn.Parameter(torch.ones(n_axes, d_model))
        self.proj = nn.ModuleList(nn.Linear(d_model, d_model, bias=False) for _ in range(n_axes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, *grid, d_model]`` with ``n_axes`` grid axes -> ``[B, *grid, d_model]`` in x's dtype."""
        checks.expect_floating(x, "x")
        if x.dim() != self.n_axes + 2 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected shape [B, {self.n_axes} grid axes, d_model = {self.d_model}], "
                             f"got {list(x.shape)}")
        return sum(self._axis(x, a) for a in range(self.n_axes))

    def _axis(self, x: torch.Tensor, a: int) -> torch.Tensor:
        """The TPE along grid axis a: ``[B, *grid, d]`` -> ``[B, *grid, d]``."""
        H, D = self.n_heads, self.d_model
        dtype = torch.promote_types(x.dtype, torch.float32)
        lines = x.to(dtype).movedim(a + 1, -2)                        # (B, *others, L, D)
        b = lines.reshape(-1, *lines.shape[-2:])                      # (B', L, D)
        decay = torch.sigmoid(self.decay_logit[a].to(dtype)).repeat_interleave(D // H)   # (D,)
        ema = linear_scan(decay.expand_as(b), b)                      # sum_{j<=i} lambda^{i-j} x_j
        gain = (self.q[a] * self.k[a]).to(dtype).view(H, -1).sum(-1)  # q_h . k_h   (H,)
        o = ema.unflatten(-1, (H, D // H)) * gain[:, None]           # (B', L, H, D/H)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps)
        o = o.flatten(-2) * self.norm_weight[a].to(dtype)             # (B', L, D)
        o = self.proj[a](o.to(x.dtype))
        return o.view(lines.shape).movedim(-2, a + 1)                 # (B, *grid, D)
