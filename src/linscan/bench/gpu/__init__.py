"""The GPU benchmark (issue 3): linscan's Triton kernels against their peers on one GPU.

    python -m linscan.bench.gpu [--smoke] [--out PATH.json] [--lengths ...] [--only ...] [--budget-s ...]
    linscan bench gpu ...                                  (the same options)

The modules, in the order of a run (the protocol is in :mod:`linscan.bench.gpu.cli`):

    cli       options, the whole flow (``run``), setup / versions / device blocks of the JSON
    variants  what is compared: each variant's inputs, linscan's call, its peer's call
    gate      the correctness gate every variant passes before it is timed
    run       settings (``GPU``, ``SMOKE``), timers, ceilings, the timed rows
    metrics   pure helpers: FLOP and byte counts, rates, the gate rule
    bars      the acceptance bars, evaluated on the rows
    report    the printed table and the JSON file
"""

from .cli import add_arguments, main, parse_args, run_args

__all__ = ["add_arguments", "main", "parse_args", "run_args"]
