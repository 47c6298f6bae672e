"""`python -m linscan.bench.gpu`: linscan's Triton kernels against their peers on one GPU (issue 3).

    python -m linscan.bench.gpu [--smoke] [--out PATH.json] [--lengths 2048,8192,32768]
                                [--only decay_scalar,...] [--budget-s 420]

One run, in this order (BENCH.md GPU protocol, METHOD.md):

1. Ceilings, measured in the same run: an 8192^3 bf16 ``torch.matmul`` (TFLOP/s) and a
   1 GiB device-to-device ``copy_`` (GB/s, bytes read + written), both via ``do_bench``.
2. Correctness gate (:mod:`linscan.bench.gpu.gate`), B=2 T=1024 H=4 K=V=128: triton in bf16
   against a float64 reference, output and every gradient; PASS when each error is at most
   2 x that of the ``chunk`` backend run on the same bf16 inputs + 1e-3. A variant that does
   not pass is not timed (its rows say "FAILED"; the gate block gives the errors).
3. Timing, bf16, H=16, K=V=128, B*T=65,536, T in {2048, 8192, 32768}: ``triton.testing.do_bench``
   medians (warmup 25 ms, rep 100 ms) of the forward (``no_grad``) and forward+backward
   (``autograd.grad`` of o against a fixed output gradient, for every floating input) of
   linscan (``backend="triton"``) and its peer side by side, and of causal SDPA at every T
   (variants and peers: :mod:`linscan.bench.gpu.variants`). Inputs are made outside the timed
   region, each in its layout, from the same tensors.
4. Peak memory of one fwd+bwd call: ``max_memory_allocated`` above the allocation before it.
5. Achieved TFLOP/s and GB/s against the ceilings (FLOP and byte counts:
   :mod:`linscan.bench.gpu.metrics`; chunk C = 64 for every row, so it is a nominal work rate).
6. The table and the bars (:mod:`linscan.bench.gpu.bars`), JSON with everything (``--out``;
   rewritten after every row, so a run cut short still leaves its rows).
7. Robustness: every measurement runs in try/except (OOM or a kernel error becomes its
   status, the run goes on, ``torch.cuda.empty_cache()`` between rows); rows not started
   within ``--budget-s`` seconds are skipped with that status; progress on stderr.

Run time on an H200 (an estimate; nothing here has run on one yet): imports and ceilings
~15 s; the gate, 5 variants x 3 fwd+bwd calls at the small size, ~1 min with compilation;
timing, 22 ``do_bench`` calls per T (66 in all) at ~0.15-0.3 s each (25 + 100 ms plus the
calls' own time; the slowest, SDPA fwd+bwd at T=32768, ~70 ms a call) ~20 s, plus three
untimed calls per measurement; the rest is first-call compilation and the peers' autotuning
(fla tries up to ~50 configs per kernel, keyed on H, K, V and the chunk, not on T, so it is
paid at the first T; 1-4 min; reported per measurement as ``first_calls_s``). About 3-7
minutes; ``--budget-s 420`` (the default) skips every measurement not started after 7 minutes,
so the table is printed before the 540 s ``timeout`` below.

On the H200 (device README: the image has torch 2.11 and triton 3.6, not the peers; they
travel as wheels). Once, here, in the repository root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl fla-core==0.6.0 mlstm_kernels==2.0.6

(both are pure-Python wheels; their other needs, einops, numpy, matplotlib and PyYAML, are in
the image). Then one device ``run`` with ``carry: [".whl"]`` and ``timeout_s: 600``::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit; set -o pipefail;
    PYTHONUNBUFFERED=1 timeout 540 python3 -m linscan.bench.gpu --out $OUT/bench_gpu.json 2>&1 \\
        | tee $OUT/bench_gpu.log

``--smoke`` runs the same flow on the CPU under the Triton interpreter (``TRITON_INTERPRET=1``,
set here before Triton is imported when there is no CUDA device) at tiny sizes (H=2, K=V=16,
T in {32, 64}, B*T=128), timed with ``time.perf_counter``, without peers and with tiny
ceilings: it proves the plumbing (gate, table, bars, JSON), not the speed.

JSON: ``{"benchmark": "gpu", "setup", "versions", "device", "ceilings", "gate": [per variant],
"rows": [per variant x T: {"variant", "T", "B", "ours": M, "peer": M | None, "peer_o_diff"}],
"bars", "bars_summary", "elapsed_s", "complete"}`` with M = ``{"impl", "status", "fwd_ms",
"fwdbwd_ms", "peak_bytes", "first_calls_s", "fwd_flops", "fwd_bytes", "fwd_rates", "fwdbwd_flops",
"fwdbwd_bytes", "fwdbwd_rates"}``; the SDPA rows have variant "sdpa" and no peer. ``peer_o_diff``
is the relative L2 difference of the peer's output from linscan's on the same bf16 inputs: a
few 1e-3 when both compute the same function (it checks the layout conversions).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import platform
import sys

import torch

import linscan

from .bars import evaluate_bars, summary
from .report import format_table, write_json
from .run import GPU, SMOKE, Bench, Setting, make_timer, measure_ceilings
from .variants import SDPA_VARIANT, VARIANTS, select


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m linscan.bench.gpu", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p.parse_args(argv)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the benchmark (also ``linscan bench gpu``)."""
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU under the Triton interpreter")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--lengths", help="comma-separated T values (default 2048,8192,32768; smoke 32,64)")
    p.add_argument("--only", help=f"comma-separated variants from {','.join(VARIANTS)} (default all)")
    p.add_argument("--budget-s", type=float, help="skip rows not started after this many seconds")


def setting_from(args: argparse.Namespace) -> Setting:
    s = SMOKE if args.smoke else GPU
    if args.smoke and torch.cuda.is_available():
        s = dataclasses.replace(s, device="cuda")
    if args.lengths:
        try:
            lengths = tuple(int(t) for t in args.lengths.split(","))
        except ValueError:
            raise SystemExit(f"--lengths: expected comma-separated integers, got {args.lengths!r}") from None
        if any(t <= 0 or t > s.tokens for t in lengths):
            raise SystemExit(f"--lengths: expected values in [1, {s.tokens}], got {args.lengths!r}")
        s = dataclasses.replace(s, lengths=lengths)
    if args.budget_s is not None:
        s = dataclasses.replace(s, budget_s=args.budget_s)
    if s.smoke:  # every bar gets evaluated at least once, whatever the tiny lengths
        s = dataclasses.replace(s, sdpa_from_T=max(s.lengths), memory_T=max(s.lengths))
    return s


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table on stdout, progress on stderr; 0 when the run completed."""
    return run_args(parse_args(argv))


def run_args(args: argparse.Namespace) -> int:
    """``main`` after argument parsing (the CLI's ``linscan bench gpu`` enters here)."""
    if args.smoke and not torch.cuda.is_available():
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            print("warning: triton was imported before --smoke could select its interpreter", file=sys.stderr)
        os.environ["TRITON_INTERPRET"] = "1"          # before anything imports triton
    if not args.smoke and not torch.cuda.is_available():
        print("linscan bench gpu: needs a CUDA device (use --smoke for the CPU plumbing run)", file=sys.stderr)
        return 2
    s = setting_from(args)
    try:
        variants = select(args.only.split(",") if args.only else None)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    report = run(s, variants, out=args.out)
    print(format_table(report))
    return 0


def run(s: Setting, variants: list, *, out: str | None = None, log=None) -> dict:
    """The whole flow of the module docstring; returns the report (also written to ``out``)."""
    timer = make_timer(s)
    report = {"benchmark": "gpu", "setup": setup(s, variants), "versions": versions(),
              "device": device_info(s.device), "ceilings": {}, "gate": [], "rows": [], "bars": [],
              "bars_summary": {}, "elapsed_s": None, "complete": False}
    bench = Bench(s, timer, {}, log=log)
    bench.say(f"ceilings ({s.matmul_n}^3 matmul, {s.copy_bytes / 2 ** 20:.0f} MiB copy)")
    report["ceilings"] = bench.ceilings = measure_ceilings(s, timer)
    bench.say(f"ceilings: {report['ceilings']}")
    report["gate"] = [bench.gate(v) for v in variants]
    status = {g["variant"]: g["status"] for g in report["gate"]} | {"sdpa": "reference"}
    for T in s.lengths:
        for variant in [SDPA_VARIANT, *variants]:
            report["rows"].append(bench.row(variant, T, status[variant.name]))
            finish(report, s, bench)
            if out:
                write_json(report, out)
    report["complete"] = True
    finish(report, s, bench)
    if out:
        write_json(report, out)
    bench.say("done")
    return report


def finish(report: dict, s: Setting, bench: Bench) -> None:
    report["bars"] = evaluate_bars(report["rows"], sdpa_from_T=s.sdpa_from_T, memory_T=s.memory_T)
    report["bars_summary"] = summary(report["bars"])
    report["elapsed_s"] = bench.elapsed()


def setup(s: Setting, variants: list) -> dict:
    return {"smoke": s.smoke, "device": s.device, "dtype": str(s.dtype).replace("torch.", ""), "H": s.H,
            "K": s.K, "V": s.V, "tokens": s.tokens, "lengths": list(s.lengths),
            "B": {str(t): s.dims(t).B for t in s.lengths}, "gate_shape": s.gate.__dict__,
            "variants": [v.name for v in variants], "chunk_for_flops": s.chunk, "budget_s": s.budget_s,
            "sdpa_bar_from_T": s.sdpa_from_T, "memory_bar_T": s.memory_T,
            "timing": (f"perf_counter, median of {s.repeats}" if s.smoke else
                       f"do_bench median, warmup {s.warmup_ms:g} ms, rep {s.rep_ms:g} ms"),
            "fwd": "no_grad forward", "fwdbwd": "forward + autograd.grad for every floating input",
            "memory": "fwd+bwd, torch.cuda.max_memory_allocated above the allocation before the call"}


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "linscan": linscan.__version__,
           "cuda": torch.version.cuda, "triton_interpret": os.environ.get("TRITON_INTERPRET", "")}
    for name in ("triton", "fla-core", "mlstm_kernels"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_info(device: str) -> dict:
    if device != "cuda":
        return {"name": f"cpu ({platform.processor() or platform.machine()}), Triton interpreter",
                "threads": torch.get_num_threads()}
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
            "memory_bytes": p.total_memory}

