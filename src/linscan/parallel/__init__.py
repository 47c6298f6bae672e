"""Sequence parallelism (LASP-2, MATH.md section 7) on torch.distributed.

One sequence split across the ranks of a process group: rank r holds tokens
``[r T/W, (r+1) T/W)`` and the ranks exchange only per-rank state summaries, whose size
does not depend on T (softmax attention, LASP-2H, gathers K and V instead).

    from linscan.parallel import decay_scan, delta_scan
    o, state = delta_scan(q, k, v, beta, g, output_final_state=True)   # q, k, v: this rank's slice

Each op takes the arguments of its single-device counterpart in ``linscan.ops`` plus
``group=None`` (the world). ``sequence_parallel(model, group)`` makes a whole model run so.
"""

from .attention import attention
from .decay import decay_scan
from .delta import delta_scan
from .mlstm import mlstm_scan
from .model import sequence_parallel

__all__ = ["attention", "decay_scan", "delta_scan", "mlstm_scan", "sequence_parallel"]
