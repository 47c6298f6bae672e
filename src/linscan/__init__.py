"""linscan: linear-recurrent sequence models, exact and fast on any machine.

The ops live in :mod:`linscan.ops` (``decay_scan``, ``delta_scan``,
``mlstm_scan``); see ``shared/MATH.md`` for the recurrences they compute.
"""

__version__ = "0.1.0"
