"""Timers and peak-memory probes for the benchmarks (BENCH.md protocol).

Timing. Every candidate of a comparison is called once to warm up (by the
caller, which also keeps that call's output), then the candidates are timed
*round-robin* (a, b, c, a, b, c, ...) so that load on a shared machine
drifts over all of them alike; each reports the median of its repeats. A
candidate whose warm-up call took longer than ``slow_s`` is timed once more
only, after the rounds (the token loops: minutes per call otherwise).

CPU peak memory. ``rss_peak_bytes`` resets the kernel's high-water mark of
the process's resident set (Linux: ``/proc/self/clear_refs``), runs the call
and reports ``VmHWM`` minus the resident set before it: live tensors plus
the allocator's slack, inputs excluded. The benchmark runs it in a fresh
process per measurement (``linscan.bench.ops``), after one warm-up call at a
tiny size that pays the one-time set-up (tens of MiB for some kernels),
because in a process that ran real work before, memory that malloc kept
from earlier calls is reused without showing up. (``tracemalloc`` does not see torch allocations, and
``torch.profiler(profile_memory=True)``, which does, itself inflated the
resident set of fla's reference kernels tenfold and got the process killed.)

CUDA. ``torch.cuda.Event`` timing around the call with a synchronize, or
``triton.testing.do_bench`` when Triton is importable; peak memory is
``torch.cuda.max_memory_allocated`` above what was allocated before the call.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

Call = Callable[[], object]


def clock(fn: Call) -> float:
    """Wall-clock seconds of one call of ``fn`` (CPU: the call is synchronous)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_round_robin(calls: dict[str, Call], *, repeats: int, warm: dict[str, float], slow_s: float = 5.0,
                     timer: Callable[[Call], float] = clock) -> dict[str, list[float]]:
    """Time the (already warmed-up) ``calls`` in turn, ``repeats`` rounds; returns the times per name.

    ``warm`` holds each call's warm-up time: a call slower than ``slow_s`` seconds is
    timed once, after the rounds, so that its load does not sit between the others.
    """
    fast = [name for name in calls if warm[name] <= slow_s]
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name in fast:
            times[name].append(timer(calls[name]))
    for name in calls:
        if name not in fast:
            times[name].append(timer(calls[name]))
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so that the next call's peak resident set
    measures what it allocates rather than what earlier calls left cached."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_peak_bytes(fn: Call) -> int | None:
    """Growth of this process's peak resident set during one call of ``fn`` (None off Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")                     # resets VmHWM to the current resident set
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def cuda_timer(warmup_ms: float = 25, rep_ms: float = 100) -> Callable[[Call], float]:
    """A timer for CUDA calls: ``triton.testing.do_bench`` (median, seconds) or CUDA events."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None

    def timer(fn: Call) -> float:
        if do_bench is not None:
            return do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") / 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3

    return timer


def cuda_peak_bytes(fn: Call) -> int:
    """Peak CUDA bytes allocated during ``fn`` above those allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before
