"""``linscan bench grid``: the 2-D grid ops' fast backends against their cell loop (CPU).

pLSTM-2D (P and D mode; tiled and row-sweep backends) and the 2-D SSM (row sweep) at
H = 4 heads, K = V = 32 (the SSM: P = 32 channels per head, N = 16 states), float32:
forward and forward + backward, median of a few repeats, one process. The cell loop runs
up to ``naive_max`` cells per side (it costs seconds per pass); the fast backends run at
every size, so their time per cell shows whether it grows linearly in the number of cells.
Speed-ups are of each fast backend over the cell loop on the same inputs.
"""

from __future__ import annotations

import json
import sys
import time

REPEATS = 3


def _plstm_inputs(side: int, mode: str, H: int, K: int, V: int):
    import torch

    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(1, side, side, H, *shape, generator=g).requires_grad_()

    T = torch.rand(1, side, side, H, 4, generator=g)
    if mode == "D":
        T[..., 2] = 0                                    # chirality: T^dl = 0
    gates = [torch.rand(1, side, side, H, 2, generator=g), T, torch.rand(1, side, side, H, 2, generator=g),
             torch.rand(1, side, side, H, generator=g)]
    return [rand(K), rand(K), rand(V)] + [x.requires_grad_() for x in gates]


def _ssm_inputs(side: int, H: int, P: int, N: int):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, side, side, H, P, generator=g).requires_grad_()
    decays = [(0.5 + 0.5 * torch.rand(1, side, side, H, N, generator=g)).requires_grad_() for _ in range(4)]
    others = [torch.randn(1, side, side, H, N, generator=g).mul(0.1).requires_grad_() for _ in range(4)]
    return [x, *decays, *others]


def _time(fn, inputs, backward: bool) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = fn(*inputs)
        if backward:
            out.square().mean().backward()
        times.append(time.perf_counter() - t0)
    return sorted(times)[REPEATS // 2]


def _cases(H: int, K: int):
    """(op name, fast backends, inputs for a side, the op with a given backend)."""
    from ..ops.grid.plstm import plstm2d
    from ..ops.grid.ssm2d import ssm2d

    for mode in ("P", "D"):
        yield (f"plstm2d {mode}", ("tile", "sweep"), lambda side, mode=mode: _plstm_inputs(side, mode, H, K, K),
               lambda backend, mode=mode: (lambda *a: plstm2d(*a, mode=mode, backend=backend)))
    yield ("ssm2d", ("sweep",), lambda side: _ssm_inputs(side, H, K, 16),
           lambda backend: (lambda *a: ssm2d(*a, backend=backend)))


def _timings(fn, inputs) -> dict:
    return {"fwd_s": _time(lambda *a: fn(*a).detach(), inputs, backward=False),
            "fwdbwd_s": _time(fn, inputs, backward=True)}


def run(sides=(32, 64, 128), *, naive_max: int = 64, H: int = 4, K: int = 32, threads: int = 2,
        out: str | None = None) -> dict:
    """Time every op and backend; print a table; JSON to ``out``. Returns the rows."""
    import torch

    torch.set_num_threads(threads)
    rows = []
    for name, fast, make_inputs, make_fn in _cases(H, K):
        for side in sides:
            inputs = make_inputs(side)
            naive = {}
            if side <= naive_max:
                naive = {f"naive_{key}": t for key, t in _timings(make_fn("naive"), inputs).items()}
            for backend in fast:
                row = {"op": name, "backend": backend, "side": side, "cells": side * side,
                       **_timings(make_fn(backend), inputs), **naive}
                if naive:
                    row["speedup_fwd"] = row["naive_fwd_s"] / row["fwd_s"]
                    row["speedup_fwdbwd"] = row["naive_fwdbwd_s"] / row["fwdbwd_s"]
                row["us_per_cell"] = 1e6 * row["fwdbwd_s"] / row["cells"]
                rows.append(row)
            print(f"bench grid: {name} {side} x {side} done", file=sys.stderr, flush=True)
    result = {"H": H, "K": K, "V": K, "threads": threads, "dtype": "float32", "rows": rows}
    print(format_table(result))
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


def format_table(result: dict) -> str:
    def cell(row, key, width, digits):
        return format(row[key], f">{width}.{digits}f") if key in row else "-".rjust(width)

    lines = [f"H = {result['H']}, K = V = {result['K']}, {result['dtype']}, {result['threads']} threads; seconds",
             f"{'op':<10} {'backend':<7} {'grid':>9} {'fwd':>7} {'naive fwd':>10} {'x':>6} {'f+b':>7} "
             f"{'naive f+b':>10} {'x':>6} {'us/cell f+b':>12}"]
    for r in result["rows"]:
        lines.append(f"{r['op']:<10} {r['backend']:<7} {r['side']:>4} x {r['side']:<3} {r['fwd_s']:>7.3f} "
                     f"{cell(r, 'naive_fwd_s', 10, 3)} {cell(r, 'speedup_fwd', 6, 1)} "
                     f"{r['fwdbwd_s']:>7.3f} {cell(r, 'naive_fwdbwd_s', 10, 3)} "
                     f"{cell(r, 'speedup_fwdbwd', 6, 1)} {r['us_per_cell']:>12.1f}")
    return "\n".join(lines)
