"""``linscan bench mom``: the cost of a mixture-of-memories layer against one Gated DeltaNet layer.

One layer's forward + backward at width ``d_model`` on ``B x T`` tokens (CPU, float32), MoM with
M memories, top-k and a shared memory, against a Gated DeltaNet layer of the same width and
heads: the median time and the peak resident-set growth, each mixer in a fresh process (so
that one's cached memory does not count for the other). A token touches k routed memories
plus the shared one, so the expected ratio is near k + 1 (3 at the defaults), not M + 1.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time

REPEATS = 5


def _measure(name: str, options: dict, d_model: int, n_heads: int, B: int, T: int, threads: int, queue) -> None:
    import torch

    from linscan.bench.timing import release_free_memory, rss_peak_bytes
    from linscan.nn.mixers import MIXERS

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layer = MIXERS[name](d_model, n_heads, **options)
    x = torch.randn(B, T, d_model, requires_grad=True)

    def step():
        y, _ = layer(x)
        y.square().mean().backward()

    step()                                                   # warm-up
    release_free_memory()
    peak = rss_peak_bytes(step)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    queue.put({"mixer": name, "options": options, "time_s": sorted(times)[REPEATS // 2], "peak_bytes": peak,
               "parameters": sum(p.numel() for p in layer.parameters())})


def run(T: int = 4096, *, B: int = 1, d_model: int = 256, n_heads: int = 4, n_memories: int = 4, top_k: int = 2,
        threads: int = 2, out: str | None = None) -> dict:
    """Measure both layers; print a table; JSON to ``out``."""
    rows = []
    for name, options in (("gated_deltanet", {}),
                          ("mom", {"n_memories": n_memories, "top_k": top_k, "shared_memory": True})):
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(name, options, d_model, n_heads, B, T, threads, queue))
        proc.start()
        rows.append(queue.get(timeout=1800))
        proc.join()
    base, mom = rows
    result = {"T": T, "B": B, "d_model": d_model, "n_heads": n_heads, "threads": threads, "rows": rows,
              "time_ratio": mom["time_s"] / base["time_s"],
              "memory_ratio": None if not base["peak_bytes"] else mom["peak_bytes"] / base["peak_bytes"],
              "memories_touched": top_k + 1}
    lines = [f"{'layer':<16} {'fwd+bwd s':>10} {'peak MiB':>9} {'params':>9}"]
    for r in rows:
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        lines.append(f"{r['mixer']:<16} {r['time_s']:>10.3f} {peak:>9} {r['parameters']:>9,}")
    memory = "-" if result["memory_ratio"] is None else f"{result['memory_ratio']:.2f}"
    lines.append(f"MoM / Gated DeltaNet: time {result['time_ratio']:.2f}x, memory {memory}x "
                 f"(memories per token: {top_k} routed + 1 shared; {n_memories} + 1 in all)")
    print(f"bench mom: B = {B}, T = {T}, d_model = {d_model}, {n_heads} heads, float32, {threads} threads",
          file=sys.stderr)
    print("\n".join(lines))
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result
