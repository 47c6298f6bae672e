"""Recurrences over 2-D grids (MATH.md section 8), layout ``[B, X, Y, H, K]``.

    from linscan.ops.grid import plstm2d, plstm1d, ssm2d, discretize

Each family has a cell loop (``"naive"``, the reference) and a row sweep built on
:func:`linscan.ops.linear_scan` (``"sweep"``, differentiable, what ``backend="auto"`` picks):

- ``plstm2d`` / ``plstm1d``: pLSTM edge states with source, transition and mark gates, P-mode
  (normalised propagation) and D-mode (multitree), four orientations (``linscan.ops.grid.plstm``);
- ``ssm2d``: the 2-D state space model of Chimera, cell and Roesser forms, with the ZOH
  ``discretize`` of its continuous parameters (``linscan.ops.grid.ssm2d``).

LightNet's additive recurrence needs no grid op: one scan over any flattening
(``linscan.ops.additive_scan``).
"""

from .plstm import normalize_transitions, plstm1d, plstm2d
from .ssm2d import discretize, ssm2d

__all__ = ["discretize", "normalize_transitions", "plstm1d", "plstm2d", "ssm2d"]
