"""Chimera-style 2-D state space model on a (time x variate) grid (MATH.md section 8.4).

    from linscan.ops.grid.ssm2d import ssm2d, discretize

    y = ssm2d(x, *discretize(A1, A2, A3, A4, B1, B2, dt1, dt2), C1, C2, D, form="cell")

Axes: X is time t, Y is variate v. Per head h and state channel n (all transitions
diagonal), two states per channel p of the head: h1 (temporal, carried along t) and
h2 (cross-variate, carried along v). The backends are ``naive`` (the cell loop) and
``sweep`` (one 1-D linear scan along time per variate row).
"""

from __future__ import annotations

import torch

from ... import checks, registry
from . import naive, sweep  # noqa: F401  (register the backends)
from .discretize import Discretized, discretize, phi1, zoh

__all__ = ["ssm2d", "discretize", "Discretized", "phi1", "zoh", "FORMS", "COEFFICIENTS"]

FORMS = ("cell", "roesser")
COEFFICIENTS = ("a1", "a2", "a3", "a4", "b1", "b2", "c1", "c2")


def ssm2d(x: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, a3: torch.Tensor, a4: torch.Tensor,
          b1: torch.Tensor, b2: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor,
          d: torch.Tensor | None = None, *, form: str = "cell", reverse_variates: bool = False,
          backend: str = "auto") -> torch.Tensor:
    """The 2-D SSM over a grid, from discretised per-cell coefficients (Ab1..Ab4, Bb1, Bb2, C1, C2, D).

    Cell (v, t) = (variate, time); boundary states are zero (h1 before t = 0, h2 before the
    first variate). Every coefficient is read at the cell being computed.

    ``form="cell"`` (the paper's form; index conventions **unverified**): both states live in
    the cell, h1 reads the cell before in time, h2 the cell before in variate order:

        h1_{v,t} = Ab1 h1_{v,t-1} + Ab2 h2_{v,t-1} + Bb1 x_{v,t}
        h2_{v,t} = Ab3 h1_{v-1,t} + Ab4 h2_{v-1,t} + Bb2 x_{v,t}
        y_{v,t}  = C1 h1_{v,t} + C2 h2_{v,t} + D x_{v,t}

    ``form="roesser"`` (the standard Roesser model = pLSTM's edge form, MATH.md 8.2 with
    i = t, j = v, R = h1, D = h2): states live on edges; a cell reads its two incoming
    states, ``h1_in = h1_{v,t-1}`` and ``h2_in = h2_{v-1,t}``, and writes its outgoing ones:

        h1_{v,t} = Ab1 h1_in + Ab2 h2_in + Bb1 x_{v,t}
        h2_{v,t} = Ab3 h1_in + Ab4 h2_in + Bb2 x_{v,t}
        y_{v,t}  = C1 h1_in + C2 h2_in + D x_{v,t}

    With per-channel states ``h [P, N]``: ``Bb x`` is the outer product ``x_p Bb_n``, ``Ab h``
    scales channel n, ``C h = sum_n C_n h_{p,n}``; heads are independent.

    Args:
        x: input ``[B, X, Y, H, P]``: batch, time, variates, heads, channels per head.
        a1, a2, a3, a4, b1, b2: discretised Ab1, Ab2, Ab3, Ab4, Bb1, Bb2 (:func:`discretize`),
            each ``[B, X, Y, H, N]`` (per cell, selective) or ``[H, N]`` (fixed).
        c1, c2: output maps of h1 and h2, ``[B, X, Y, H, N]`` or ``[H, N]``.
        d: skip ``[H]`` or ``[H, P]``, or None (no skip).
        form: ``"cell"`` or ``"roesser"`` (above).
        reverse_variates: scan the variates from the last to the first (v - 1 above becomes
            v + 1): the backward module, equal to flipping Y of every input, running, and
            flipping y back.
        backend: ``"auto"`` (``"sweep"``), ``"naive"``, ``"sweep"``; see ``linscan.ops.available()``.

    Returns:
        y ``[B, X, Y, H, P]`` in x's dtype (computed in float64 for float64 x, float32
        otherwise). Differentiable in every tensor argument.

    Stability (MATH.md): nothing is enforced; BIBO stability needs
    ``det(I - diag(z1, z2) [[Ab1, Ab2], [Ab3, Ab4]]) != 0`` on the closed unit bidisk, and
    entry-wise ``|Ab| < 1`` is not enough.
    """
    coefficients = check_arguments(x, (a1, a2, a3, a4, b1, b2, c1, c2), d, form)
    fn = registry.get("ssm2d", backend, x.device)
    return fn(x, *coefficients, d, form=form, reverse_variates=bool(reverse_variates))


def check_arguments(x, coefficients, d, form: str) -> tuple[torch.Tensor, ...]:
    """``ssm2d``'s checks; returns the eight coefficients expanded to ``[B, X, Y, H, N]`` (views)."""
    if form not in FORMS:
        raise ValueError(f"form: expected one of {list(FORMS)}, got {form!r}")
    checks.expect_floating(x, "x")
    checks.expect_rank(x, "x", "B X Y H P")
    B, X, Y, H, P = x.shape
    if 0 in x.shape:
        raise ValueError(f"x: expected non-empty [B, X, Y, H, P], got {list(x.shape)}")
    checks.expect_floating(coefficients[0], "a1")
    N = coefficients[0].shape[-1] if coefficients[0].dim() > 0 else 0
    if N == 0:
        raise ValueError(f"a1: expected a non-empty state axis N, got shape {list(coefficients[0].shape)}")
    forms = {"H N": (H, N), "B X Y H N": (B, X, Y, H, N)}
    full = []
    for name, c in zip(COEFFICIENTS, coefficients):
        checks.expect_floating(c, name)
        checks.check_gate(c, name, forms, x.device, max_value=None)
        checks.expect_same_dtype(c, name, x, "x")
        full.append(c.expand(B, X, Y, H, N))
    if d is not None:
        checks.check_gate(d, "d", {"H": (H,), "H P": (H, P)}, x.device, max_value=None)
        checks.expect_same_dtype(d, "d", x, "x")
    return tuple(full)
