"""Layers over grids, input ``[B, X, Y, d_model]`` (MATH.md section 8).

- :class:`PLSTM2D` (P or D mode) and :class:`PLSTM2DBlock` (a P layer, a D layer, a SwiGLU);
- :class:`LightNetAttention`: the additive recurrence with MD-LRPE, causal on sequences
  ``[B, T, d_model]`` (with decode state), non-causal on grids of any number of axes;
- :class:`SSM2D`: Chimera's 2-D state space model over time x variates, ``[B, T, V, d_model]``.
"""

from .lightnet import LightNetAttention
from .plstm import PLSTM2D, PLSTM2DBlock
from .ssm2d import SSM2D

__all__ = ["LightNetAttention", "PLSTM2D", "PLSTM2DBlock", "SSM2D"]
