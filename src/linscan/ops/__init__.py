"""Pure functions on tensors: the scan families and their backends.

    from linscan.ops import decay_scan, delta_scan, mlstm_scan, available
"""

from .decay import decay_scan
from .delta import delta_scan
from .mlstm import mlstm_scan
from .scan import linear_scan
from .registry import available, get, register, resolve

__all__ = ["decay_scan", "delta_scan", "mlstm_scan", "linear_scan", "available", "get", "register", "resolve"]
