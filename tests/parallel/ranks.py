"""Run a function on W gloo ranks in fresh processes, with a timeout so that a hang fails.

``run_ranks(fn, world, *args)`` spawns ``world`` processes; each initialises gloo (TCP on a
free local port), calls ``fn(rank, world, *args)`` with 1 thread, and sends back its result
(tensors are moved to the CPU). Returns the results in rank order. An exception on any
rank fails the test with that rank's traceback; a rank still running after ``timeout``
seconds is killed and the test fails. ``fn`` must be importable (a module-level function).
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import queue
import socket
import traceback

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn, rank, world, port, args, results):
    os.environ.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TRITON_INTERPRET="1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        try:
            out = fn(rank, world, *args)
        finally:
            dist.destroy_process_group()
        buffer = io.BytesIO()
        torch.save(out, buffer)         # bytes, not shared-memory handles: this process exits next
        results.put((rank, "ok", buffer.getvalue()))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))


def run_ranks(fn, world: int, *args, timeout: float = 120.0) -> list:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world, port, args, results), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    outs, errors = {}, {}
    try:
        for _ in range(world):
            rank, status, value = results.get(timeout=timeout)
            (outs if status == "ok" else errors)[rank] = value
            if errors:
                break
    except queue.Empty:
        pytest.fail(f"ranks {sorted(set(range(world)) - set(outs))} of {world} did not finish in {timeout} s (hang?)")
    finally:
        for p in procs:
            p.join(timeout=5 if not errors else 0.5)
            if p.is_alive():
                p.kill()
    if errors:
        rank = min(errors)
        pytest.fail(f"rank {rank} of {world} failed:\n{errors[rank]}")
    import torch

    return [torch.load(io.BytesIO(outs[r]), weights_only=False) for r in range(world)]
