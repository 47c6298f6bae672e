"""Pure functions on tensors: the scan families and their backends.

    from linscan.ops import decay_scan, delta_scan, mlstm_scan, additive_scan, available
    from linscan.ops.grid import plstm2d, ssm2d          # recurrences over 2-D grids
"""

from .decay import decay_scan
from .delta import delta_scan
from .mlstm import mlstm_scan
from .scan import linear_scan
from .additive import additive_scan
from . import grid  # noqa: F401  (register the grid families)
from .registry import available, get, register, resolve

__all__ = ["additive_scan", "decay_scan", "delta_scan", "mlstm_scan", "linear_scan", "available", "get", "register", "resolve"]
