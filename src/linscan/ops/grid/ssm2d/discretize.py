"""Zero-order-hold discretisation of the 2-D SSM (MATH.md section 8.4).

Continuous system, per head h and state channel n (every A diagonal, so each
(h, n) is an independent 2 x 2 system driven by the input):

    dh1/dt = A1 h1 + A2 h2 + B1 x          (t: time, step dt1)
    dh2/dv = A3 h1 + A4 h2 + B2 x          (v: variate, step dt2)

ZOH along each axis holds everything but the own state over the step:

    Ab1 = exp(dt1 A1),   Bb1 = A1^{-1}(exp(dt1 A1) - I) B1,   Ab2 = A1^{-1}(exp(dt1 A1) - I) A2
    Ab4 = exp(dt2 A4),   Bb2 = A4^{-1}(exp(dt2 A4) - I) B2,   Ab3 = A4^{-1}(exp(dt2 A4) - I) A3

The diagonal parts are the textbook ZOH; the cross terms Ab2, Ab3 are derived
(h2 held over a time step, h1 over a variate step) and are **unverified**
against the paper (no official code). ``A^{-1}(exp(dt A) - I) = dt phi1(dt A)``
with ``phi1(z) = (e^z - 1) / z``, computed so that A -> 0 and dt -> 0 are exact
limits (``phi1(0) = 1``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ... import checks

# below this |z|, phi1 uses its Taylor series: expm1(z) / z loses digits to cancellation in z
PHI1_TAYLOR = 1e-4


class Discretized(NamedTuple):
    """Per-cell transition coefficients, in the order :func:`linscan.ops.grid.ssm2d.ssm2d` takes them.

    Each is ``[H, N]`` (fixed) or ``[B, X, Y, H, N]`` (per cell), following the forms of
    the step sizes and of B1, B2 that produced it.
    """

    a1: torch.Tensor
    a2: torch.Tensor
    a3: torch.Tensor
    a4: torch.Tensor
    b1: torch.Tensor
    b2: torch.Tensor


def phi1(z: torch.Tensor) -> torch.Tensor:
    """``(exp(z) - 1) / z`` elementwise, 1 at z = 0, smooth (and with finite gradients) everywhere."""
    small = z.abs() < PHI1_TAYLOR
    z_safe = torch.where(small, torch.ones_like(z), z)  # keeps the unused branch's gradient finite
    return torch.where(small, 1 + z / 2 + z * z / 6, torch.expm1(z_safe) / z_safe)


def zoh(dt: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exp(dt A), A^{-1}(exp(dt A) - I))`` for diagonal A ``[H, N]`` and dt ``[H]`` or ``[..., H]``.

    Returns two tensors of shape ``dt.shape + (N,)``.
    """
    z = dt[..., None] * a                                   # (..., H, N)
    return torch.exp(z), dt[..., None] * phi1(z)


def discretize(a1: torch.Tensor, a2: torch.Tensor, a3: torch.Tensor, a4: torch.Tensor,
               b1: torch.Tensor, b2: torch.Tensor, dt1: torch.Tensor, dt2: torch.Tensor) -> Discretized:
    """Continuous 2-D SSM parameters -> the per-cell coefficients :func:`ssm2d` takes (ZOH, see module doc).

    Args:
        a1, a4: diagonal temporal / cross-variate state matrices ``[H, N]`` (negative reals for a
            decaying state; not enforced).
        a2, a3: diagonal cross blocks ``[H, N]``: h2 -> dh1/dt and h1 -> dh2/dv.
        b1, b2: input matrices ``[H, N]`` (fixed) or ``[B, X, Y, H, N]`` (selective).
        dt1, dt2: step sizes along time and along variates, ``[H]`` or ``[B, X, Y, H]``, >= 0
            (the layer makes them positive with softplus).

    Returns:
        :class:`Discretized` ``(a1, a2, a3, a4, b1, b2)``: Ab1, Ab2 follow dt1's form (+ N),
        Ab3, Ab4 follow dt2's, Bb1 and Bb2 the broadcast of their dt and b; dtype promoted.
    """
    H, N = _check(a1, a2, a3, a4, b1, b2, dt1, dt2)
    decay1, hold1 = zoh(dt1, a1)                            # (..., H, N)
    decay4, hold4 = zoh(dt2, a4)
    return Discretized(a1=decay1, a2=hold1 * a2, a3=hold4 * a3, a4=decay4, b1=hold1 * b1, b2=hold4 * b2)


def _check(a1, a2, a3, a4, b1, b2, dt1, dt2) -> tuple[int, int]:
    for name, x in (("a1", a1), ("a2", a2), ("a3", a3), ("a4", a4)):
        checks.expect_floating(x, name)
        checks.expect_rank(x, name, "H N")
    H, N = a1.shape
    for name, x in (("a2", a2), ("a3", a3), ("a4", a4)):
        checks.expect_shape(x, name, "H N", (H, N))
        checks.expect_device(x, name, a1.device, "a1")
    for name, x in (("dt1", dt1), ("dt2", dt2)):
        checks.expect_floating(x, name)
        checks.expect_device(x, name, a1.device, "a1")
        if x.dim() not in (1, 4) or x.shape[-1] != H:
            raise ValueError(f"{name}: expected shape [H] = [{H}] or [B, X, Y, H] with H = {H} "
                             f"(that of a1), got {list(x.shape)}")
    for name, x in (("b1", b1), ("b2", b2)):
        checks.expect_floating(x, name)
        checks.expect_device(x, name, a1.device, "a1")
        if x.dim() not in (2, 5) or tuple(x.shape[-2:]) != (H, N):
            raise ValueError(f"{name}: expected shape [H, N] = [{H}, {N}] or [B, X, Y, H, N] with "
                             f"(H, N) = ({H}, {N}) (that of a1), got {list(x.shape)}")
    cells = {tuple(x.shape[:3]) for x in (dt1, dt2, b1, b2) if x.dim() > 2}
    if len(cells) > 1:
        raise ValueError(f"dt1, dt2, b1, b2: expected the same [B, X, Y] where per cell, got {sorted(cells)}")
    return H, N
