"""``linscan.bench.tcnca``: forward + backward time of one TCNCA layer against full causal attention, vs T.

One layer (``linscan.nn.mixers.TCNCA`` at its defaults but ``chunk_size``, and the softmax
``Attention`` mixer: SDPA, causal, RoPE) at width ``d_model`` on ``batch x T`` tokens, float32,
CPU: the median of ``repeats`` calls of forward + backward (of the mean square of the output),
the two layers timed round-robin at each T (``linscan.bench.timing``). The attention products
cost, forward,

    full causal attention   2 B T^2 H D   FLOPs  (QK^T and PV over the T^2 / 2 visible pairs)
    chunked attention       2 B T C H D   FLOPs  (C^2 / 2 pairs in each of T / C chunks)

plus ``8 B T d_model H D`` for the four projections and ``2 B T d_model K D_tcn`` for the TCN:
TCNCA grows linearly in T, attention quadratically once its T^2 term dominates. The log-log
slope of time against T is fitted over the lengths (1: linear, 2: quadratic).

    linscan bench tcnca --out runs/bench-tcnca
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

LENGTHS = (512, 1024, 2048, 4096, 8192)
MIXER_NAMES = ("tcnca", "attention")


def log(text: str) -> None:
    print(f"bench tcnca: {text}", file=sys.stderr, flush=True)


def _step(layer, x):
    def call():
        y, _ = layer(x)
        y.square().mean().backward()

    return call


def time_length(T: int, *, d_model: int, n_heads: int, chunk_size: int, batch: int, repeats: int) -> dict[str, float]:
    """Median seconds of forward + backward at length T, per mixer (one warm-up call each)."""
    import torch

    from ..nn.mixers import MIXERS
    from .timing import clock, median, time_round_robin

    torch.manual_seed(0)
    options = {"tcnca": {"chunk_size": chunk_size}, "attention": {}}
    x = torch.randn(batch, T, d_model, requires_grad=True)
    calls = {name: _step(MIXERS[name](d_model, n_heads, **options[name]), x) for name in MIXER_NAMES}
    warm = {name: clock(call) for name, call in calls.items()}
    times = time_round_robin(calls, repeats=repeats, warm=warm, slow_s=60.0)
    return {name: median(t) for name, t in times.items()}


def loglog_slope(lengths: list[int], times: list[float]) -> float:
    """Least-squares slope of log(time) against log(T)."""
    xs, ys = [math.log(t) for t in lengths], [math.log(s) for s in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def run(out: str = "runs/bench-tcnca", *, lengths: tuple[int, ...] = LENGTHS, d_model: int = 128, n_heads: int = 4,
        chunk_size: int = 64, batch: int = 1, repeats: int = 3, threads: int = 1, progress: bool = True) -> dict:
    """Time both layers at every length; print a table; results.json and tcnca.png in ``out``."""
    import torch

    for key, value in {"d_model": d_model, "n_heads": n_heads, "chunk_size": chunk_size, "batch": batch,
                       "repeats": repeats, "threads": threads}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}: expected a positive integer, got {value!r}")
    if not lengths or min(lengths) < 2 or list(lengths) != sorted(set(lengths)):
        raise ValueError(f"lengths: expected increasing lengths >= 2, got {tuple(lengths)}")
    torch.set_num_threads(threads)
    results = {"config": {"d_model": d_model, "n_heads": n_heads, "chunk_size": chunk_size, "batch": batch,
                          "repeats": repeats, "threads": threads, "dtype": "float32",
                          "torch": torch.__version__},
               "rows": []}
    for T in lengths:
        times = time_length(T, d_model=d_model, n_heads=n_heads, chunk_size=chunk_size, batch=batch,
                            repeats=repeats)
        for name in MIXER_NAMES:
            results["rows"].append({"mixer": name, "T": T, "time_s": times[name],
                                    "us_per_token": times[name] / (batch * T) * 1e6})
        if progress:
            log(f"T = {T}: " + ", ".join(f"{n} {times[n] * 1e3:.1f} ms" for n in MIXER_NAMES))
    if len(lengths) > 1:
        results["slope"] = {name: loglog_slope(list(lengths), [r["time_s"] for r in results["rows"]
                                                                if r["mixer"] == name]) for name in MIXER_NAMES}
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, path / "tcnca.png")
    print(format_table(results))
    return results


def format_table(results: dict) -> str:
    """Time per length for both layers, their ratio, and the fitted log-log slopes."""
    cfg = results["config"]
    by = {(r["mixer"], r["T"]): r for r in results["rows"]}
    lengths = sorted({r["T"] for r in results["rows"]})
    lines = [f"fwd+bwd of one layer, B = {cfg['batch']}, d_model = {cfg['d_model']}, {cfg['n_heads']} heads, "
             f"chunk {cfg['chunk_size']}, {cfg['dtype']}, {cfg['threads']} thread(s), median of {cfg['repeats']}",
             f"{'T':>6} {'tcnca ms':>10} {'attention ms':>13} {'attn/tcnca':>11} {'tcnca us/tok':>13} "
             f"{'attn us/tok':>12}"]
    for T in lengths:
        a, b = by[("tcnca", T)], by[("attention", T)]
        lines.append(f"{T:>6} {a['time_s'] * 1e3:>10.1f} {b['time_s'] * 1e3:>13.1f} {b['time_s'] / a['time_s']:>11.2f} "
                     f"{a['us_per_token']:>13.1f} {b['us_per_token']:>12.1f}")
    if "slope" in results:
        lines.append("log-log slope of time vs T: " + ", ".join(f"{n} {s:.2f}" for n, s in results["slope"].items()))
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Time against T, log-log, with slope-1 and slope-2 guides through tcnca's first point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in MIXER_NAMES:
        rows = [r for r in results["rows"] if r["mixer"] == name]
        ax.plot([r["T"] for r in rows], [r["time_s"] * 1e3 for r in rows], marker="o", label=name)
    first = next(r for r in results["rows"] if r["mixer"] == "tcnca")
    lengths = sorted({r["T"] for r in results["rows"]})
    for power, style in ((1, "k:"), (2, "k--")):
        ax.plot(lengths, [first["time_s"] * 1e3 * (T / first["T"]) ** power for T in lengths], style,
                label=f"~T^{power}")
    cfg = results["config"]
    ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="ms (forward + backward)",
           title=f"one layer, d_model {cfg['d_model']}, chunk {cfg['chunk_size']}, {cfg['threads']} thread(s)")
    ax.set_xticks(lengths, [str(T) for T in lengths])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of :func:`run` (same names, dashes for underscores; ``--heads`` for n_heads)."""
    p.add_argument("--out", default="runs/bench-tcnca", metavar="DIR", help="results.json and tcnca.png (default runs/bench-tcnca)")
    p.add_argument("--lengths", type=_int_list, default=LENGTHS,
                   help=f"sequence lengths (default {','.join(map(str, LENGTHS))})")
    p.add_argument("--d-model", type=int, default=128, help="layer width (default 128)")
    p.add_argument("--heads", type=int, default=4, help="heads of both layers (default 4)")
    p.add_argument("--chunk-size", type=int, default=64, help="TCNCA's attention chunk (default 64)")
    p.add_argument("--batch", type=int, default=1, help="sequences per call (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per layer and length (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def run_args(args: argparse.Namespace) -> dict:
    """:func:`run` with parsed options."""
    return run(args.out, lengths=args.lengths, d_model=args.d_model, n_heads=args.heads, chunk_size=args.chunk_size,
               batch=args.batch, repeats=args.repeats, threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    """``python -m linscan.bench.tcnca [options]``."""
    p = argparse.ArgumentParser(prog="python -m linscan.bench.tcnca", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        run_args(args)
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
