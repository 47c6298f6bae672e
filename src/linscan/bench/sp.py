"""``linscan bench sp``: what sequence parallelism sends, holds and costs, on W gloo ranks of this machine.

For every family and length T, one layer's forward + backward on one sequence (B = 1, H heads,
K = V = D per head) split over W ranks, against one process holding the whole sequence:

- bytes sent per rank, counted from the collectives (``linscan.parallel.comm.traffic``): the
  linear families exchange per-rank state summaries, constant in T (LASP-2); attention gathers
  K and V, growing with T;
- peak memory growth per rank (resident set, Linux) against the single process: about 1 / W of
  the activations;
- the median time of a forward + backward, W ranks against one process. On a CPU machine the
  ranks share its cores: this shows the overhead, not the speed-up real devices give.

The ranks are spawned here (gloo over TCP on localhost); no torchrun needed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import socket
import sys
import time
import traceback

FAMILIES = ("decay", "delta", "mlstm", "attention")
ATTENTION_MAX_T = 16384       # masked scores of one rank: L x T x H floats (16 GB at T = 64K, W = 4)
REPEATS = 3


def _inputs(family: str, T: int, H: int, D: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    q, k, v = randn(1, T, H, D), torch.nn.functional.normalize(randn(1, T, H, D), dim=-1), randn(1, T, H, D)
    extra = {}
    if family == "decay":
        extra["g"] = -0.1 * torch.rand(1, T, H, D, generator=gen)
    elif family == "delta":
        extra["beta"] = torch.rand(1, T, H, generator=gen)
        extra["g"] = -0.1 * torch.rand(1, T, H, generator=gen)
    elif family == "mlstm":
        extra["i"], extra["f"] = randn(1, T, H), 3 + randn(1, T, H)
    return {"q": q, "k": k, "v": v, **extra}


def _call(family: str, x: dict, parallel: bool):
    """One forward + backward of ``family`` on the inputs ``x`` (sliced already when parallel)."""
    import torch

    from linscan import ops
    from linscan import parallel as sp

    lib = sp if parallel else ops
    leaves = {n: t.detach().requires_grad_() for n, t in x.items()}
    if family == "attention":
        if parallel:
            o = sp.attention(leaves["q"], leaves["k"], leaves["v"])
        else:
            o = torch.nn.functional.scaled_dot_product_attention(
                *(leaves[n].transpose(1, 2) for n in ("q", "k", "v")), is_causal=True).transpose(1, 2)
    elif family == "decay":
        o, _ = lib.decay_scan(leaves["q"], leaves["k"], leaves["v"], leaves["g"])
    elif family == "delta":
        o, _ = lib.delta_scan(leaves["q"], leaves["k"], leaves["v"], leaves["beta"], leaves["g"])
    else:
        o, _ = lib.mlstm_scan(leaves["q"], leaves["k"], leaves["v"], leaves["i"], leaves["f"])
    o.sum().backward()


def _measure(family: str, x: dict, parallel: bool) -> dict:
    from linscan.bench.timing import release_free_memory, rss_peak_bytes
    from linscan.parallel import comm

    _call(family, x, parallel)                        # warm-up
    release_free_memory()
    comm.traffic.clear()
    peak = rss_peak_bytes(lambda: _call(family, x, parallel))
    sent = sum(comm.traffic.values())
    by_kind = dict(comm.traffic)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        _call(family, x, parallel)
        times.append(time.perf_counter() - t0)
    return {"bytes_sent": sent, "bytes_by_collective": by_kind, "peak_bytes": peak,
            "time_s": sorted(times)[len(times) // 2]}


def _worker(rank, world, port, plan, results):
    os.environ.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        if world > 1:
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        rows = []
        for family, T, H, D in plan:
            x = _inputs(family, T, H, D)
            if world > 1:
                L = T // world
                x = {n: t[:, rank * L:(rank + 1) * L] for n, t in x.items()}
                dist.barrier()
            rows.append(_measure(family, x, parallel=world > 1))
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
        results.put((rank, "ok", rows))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))


def _spawn(world: int, plan: list, timeout: float) -> list[list[dict]]:
    """Run the plan on ``world`` fresh processes (1: the single-process baseline); rows per rank."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_worker, args=(r, world, port, plan, results), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    out = {}
    try:
        for _ in range(world):
            rank, status, value = results.get(timeout=timeout)
            if status != "ok":
                raise RuntimeError(f"bench sp: rank {rank} of {world} failed:\n{value}")
            out[rank] = value
    except queue.Empty:
        raise RuntimeError(f"bench sp: the ranks did not finish within {timeout:.0f} s") from None
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world)]


def run(lengths: list[int], world: int = 4, *, families=FAMILIES, heads: int = 4, head_dim: int = 64,
        out: str | None = None, timeout: float = 1800.0) -> dict:
    """Measure every (family, T) on ``world`` ranks and on one process; print a table; JSON to ``out``."""
    plan = [(f, T, heads, head_dim) for f in families for T in lengths if f != "attention" or T <= ATTENTION_MAX_T]
    bad = [T for T in lengths if T % world]
    if bad:
        raise ValueError(f"lengths: expected multiples of the {world} ranks, got {bad}")
    print(f"bench sp: {len(plan)} rows, W = {world} gloo ranks vs 1 process, B = 1, H = {heads}, "
          f"K = V = {head_dim}, float32, forward + backward", file=sys.stderr)
    t0 = time.perf_counter()
    ranks = _spawn(world, plan, timeout)
    single = _spawn(1, plan, timeout)[0]
    rows = []
    for i, (family, T, _, _) in enumerate(plan):
        per_rank = [r[i] for r in ranks]
        rows.append({"family": family, "T": T, "world": world,
                     "bytes_sent_per_rank": max(r["bytes_sent"] for r in per_rank),
                     "bytes_by_collective": per_rank[0]["bytes_by_collective"],
                     "peak_bytes_per_rank": _max(r["peak_bytes"] for r in per_rank),
                     "peak_bytes_single": single[i]["peak_bytes"],
                     "time_s": max(r["time_s"] for r in per_rank), "time_s_single": single[i]["time_s"]})
    result = {"world": world, "heads": heads, "head_dim": head_dim, "dtype": "float32", "batch": 1,
              "threads_per_rank": 1, "cpu_count": os.cpu_count(), "rows": rows,
              "skipped": [f"attention T={T}: one rank's masked scores would take L x T x H x 4 bytes"
                          for T in lengths if "attention" in families and T > ATTENTION_MAX_T],
              "wall_s": time.perf_counter() - t0}
    print(table(result))
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


def _max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _mib(n):
    return "-" if n is None else f"{n / 2**20:.1f}"


def table(result: dict) -> str:
    lines = [f"{'family':<10} {'T':>6} {'sent/rank KiB':>14} {'peak/rank MiB':>14} {'peak 1 proc MiB':>16} "
             f"{'W ranks s':>10} {'1 proc s':>9}"]
    for r in result["rows"]:
        lines.append(f"{r['family']:<10} {r['T']:>6} {r['bytes_sent_per_rank'] / 1024:>14.1f} "
                     f"{_mib(r['peak_bytes_per_rank']):>14} {_mib(r['peak_bytes_single']):>16} "
                     f"{r['time_s']:>10.3f} {r['time_s_single']:>9.3f}")
    lines += [f"skipped: {s}" for s in result["skipped"]]
    return "\n".join(lines)
