"""The ``linscan`` command.

    linscan info                       versions, devices, registered backends
    linscan train [options]            train a model (linscan.train)
    linscan generate --ckpt DIR        sample from a trained model with the recurrent cache
    linscan eval TASK [--mixers LIST]  length generalisation on a synthetic task (linscan.eval)
    linscan bench ops [options]        the op benchmark (linscan.bench.ops)
    linscan bench model [options]      decode time vs context, training throughput (linscan.bench.models)

Every subcommand is a pair ``(add_arguments, handler)`` in ``COMMANDS`` (and
``BENCHMARKS`` under ``bench``); train, generate and eval join there. Usage
errors print one line and exit with status 2, failures with status 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import sys
from pathlib import Path

PEERS = ("fla-core", "mlstm_kernels")


class CliError(Exception):
    """A failure the user can fix: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------- info

def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect_info() -> dict:
    """Versions, threads, CUDA devices and registered backends, as plain data."""
    import torch

    import linscan
    from linscan import ops

    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            cuda.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
    return {
        "linscan": linscan.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "triton": _version("triton"),
        "peers": {name: _version(name) for name in PEERS},
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": cuda,
        "backends": ops.available(),
    }


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the information as JSON")


def _info(args) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cuda = ", ".join(f"cuda:{d['index']} {d['name']} ({d['memory_gib']} GiB)" for d in info["cuda"])
    lines = [
        f"linscan        {info['linscan']}",
        f"torch          {info['torch']}",
        f"python         {info['python']}",
        f"triton         {info['triton']}",
        *(f"{name:<15}{version}" for name, version in info["peers"].items()),
        f"cpu threads    {info['cpu_threads']} (of {info['cpu_count']} CPUs)",
        f"cuda           {cuda or 'none'}",
        "backends       " + ("; ".join(f"{f}: {', '.join(b)}" for f, b in info["backends"].items()) or "none"),
    ]
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------- argument values
# argparse ``type=`` functions: a malformed or out-of-range value is a one-line usage error
# (exit status 2) naming the option, e.g. "argument --steps: expected a positive integer, got '0'".

def _int_at_least(text: str, lo: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = lo - 1
    if value < lo:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """``"3"`` -> 3; 0, negatives and non-integers are refused."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """``"0"`` -> 0; negatives and non-integers are refused."""
    return _int_at_least(text, 0, "an integer >= 0")


def seed(text: str) -> int:
    """A random seed in [0, 2**32)."""
    value = _int_at_least(text, 0, "a seed in [0, 2**32)")
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**32), got {text!r}")
    return value


def _float_in(text: str, ok, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not ok(value):                      # NaN fails every comparison, so every range refuses it
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate)."""
    return _float_in(text, lambda x: 0 < x < math.inf, "a finite number > 0")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (weight decay, temperature)."""
    return _float_in(text, lambda x: 0 <= x < math.inf, "a finite number >= 0")


def probability(text: str) -> float:
    """A number in (0, 1] (nucleus sampling's top-p)."""
    return _float_in(text, lambda x: 0 < x <= 1, "a number in (0, 1]")


def int_list(text: str) -> list[int]:
    """``"64,128"`` -> [64, 128]: comma-separated positive integers."""
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or any(t < 1 for t in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


# ---------------------------------------------------------------- checks before any work
# Values that are well formed but do not fit this machine or the file system: exit status 1.

def option_error(error: Exception, options: dict[str, str]) -> CliError:
    """``error`` as a CliError, its leading API name swapped for the CLI's (``"lr: ..."`` -> ``"--lr: ..."``)."""
    name, sep, rest = str(error).partition(": ")
    return CliError(f"{options[name]}: {rest}" if sep and name in options else str(error))


def check_device(name: str, option: str = "--device") -> None:
    """``name`` is auto, cpu, cuda or cuda:N, and a CUDA device it names exists."""
    import torch

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise CliError(f"{option}: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"{option} {name}: no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CliError(f"{option}: expected a CUDA index below {torch.cuda.device_count()}, got {name!r}")


def check_out_dir(path: str, option: str = "--out") -> None:
    """``path`` is a folder, or one that can be created: not a file, not under a file, writable."""
    target = Path(os.path.abspath(path))
    existing = next(p for p in (target, *target.parents) if p.exists())
    if existing == target and not target.is_dir():
        raise CliError(f"{option}: expected a folder, got the file {path!r}")
    if not existing.is_dir():
        raise CliError(f"{option}: expected a folder, got {path!r} under the file {str(existing)!r}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"{option}: expected a writable folder, got {path!r} ({str(existing)!r} is read-only)")


def check_out_file(path: str | None, option: str = "--out") -> None:
    """``path`` (None: nothing to write) can be written: its folder exists and is writable, it is no folder."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"{option}: directory of {path!r} does not exist")
    if os.path.isdir(path):
        raise CliError(f"{option}: expected a file path, got the folder {path!r}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(f"{option}: expected a writable folder, got {path!r} ({folder!r} is read-only)")


# ---------------------------------------------------------------- bench

def _families(text: str) -> list[str]:
    from linscan.bench.ops import FAMILIES

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FAMILIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown family {', '.join(map(repr, bad)) or repr(text)} (choose from {', '.join(FAMILIES)})")
    return list(dict.fromkeys(names))


def _bench_ops_args(p: argparse.ArgumentParser) -> None:
    from linscan.bench.ops import CPU, CUDA, FAMILIES, NAIVE_MAX_T

    p.epilog = (f"The token loop is skipped above T={NAIVE_MAX_T}. Unless OMP_WAIT_POLICY is set, the "
                "benchmark runs with OMP_WAIT_POLICY=PASSIVE (waiting OpenMP threads sleep instead of "
                "spinning), which keeps 2-thread timings sane on a shared machine.")
    p.add_argument("--family", type=_families, default=list(FAMILIES),
                   help=f"comma-separated families (default {','.join(FAMILIES)})")
    p.add_argument("--T", type=int_list, default=None, metavar="T,...",
                   help=f"sequence lengths (default {','.join(map(str, CPU.T))} on cpu, "
                        f"{','.join(map(str, CUDA.T))} on cuda with B*T={CUDA.tokens})")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats after warm-up (default 3)")
    p.add_argument("--no-peers", action="store_true", help="skip fla, mlstm_kernels and SDPA")
    p.add_argument("--no-naive", action="store_true", help="skip linscan's token loop")
    p.add_argument("--out", metavar="PATH.json", help="also write the results as JSON")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: fp32 H=4 K=V=64 B=1; cuda: bf16 H=16 K=V=128 (default cpu)")


def _bench_ops(args) -> int:
    from linscan.bench import ops

    check_device(args.device)
    check_out_file(args.out)
    setting = ops.CUDA if args.device == "cuda" else ops.CPU
    report = ops.run(args.family, setting=setting, T=args.T, threads=args.threads, repeats=args.repeats,
                     peers=not args.no_peers, naive=not args.no_naive, env=collect_info())
    print(ops.format_table(report))
    if args.out:
        try:
            with open(args.out, "w") as fh:
                json.dump(report.as_json(), fh, indent=2)
        except OSError as e:
            raise CliError(f"--out: cannot write {args.out!r}: {e.strerror}") from e
        print(f"\nwrote {args.out}")
    return 0


def _bench_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patterns", default="DDDD,DDDA,GGGG,MMMM", help="comma-separated layer patterns")
    p.add_argument("--contexts", type=int_list, default=[1024, 16384], metavar="L,...",
                   help="context lengths for the per-token decode time (default 1024,16384)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--out", metavar="PATH.json", help="also write the results as JSON")


def _bench_model(args) -> int:
    from linscan.bench import models
    from linscan.models import preset

    patterns = [t.strip() for t in args.patterns.split(",") if t.strip()]
    if not patterns:
        raise CliError(f"--patterns: expected comma-separated layer patterns such as DDDA,GGGG, got {args.patterns!r}")
    try:
        for pattern in patterns:
            preset(args.preset, pattern=pattern)
    except ValueError as e:
        raise option_error(e, {"preset": "--preset", "pattern": "--patterns"}) from e
    check_out_file(args.out)
    models.run(patterns, args.contexts, preset_name=args.preset, threads=args.threads, out=args.out)
    return 0


def _bench_rnn_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cells", default="gru,lstm", help="comma-separated cells from gru, lstm (default gru,lstm)")
    p.add_argument("--lengths", type=int_list, default=[1024, 16384], metavar="T,...",
                   help="sequence lengths (default 1024,16384)")
    p.add_argument("--batch", type=positive_int, default=4, help="B (default 4)")
    p.add_argument("--dim", type=positive_int, default=256, help="input and hidden size D (default 256)")
    p.add_argument("--compile", action="store_true", help="also time Newton with torch.compile'd cell maps")
    p.add_argument("--train-steps", type=non_negative_int, default=150, metavar="N",
                   help="steps of the 1-layer ParaGRU LM whose trained cell's convergence is reported (0: skip)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default cpu)")
    p.add_argument("--out", metavar="PATH.json", help="also write the results as JSON")


def _bench_rnn(args) -> int:
    from linscan.bench import rnn

    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = sorted(set(cells) - set(rnn.CELLS))
    if bad or not cells:
        raise CliError(f"--cells: expected names from {sorted(rnn.CELLS)}, got {args.cells!r}")
    check_device(args.device)
    check_out_file(args.out)
    rnn.run(cells, args.lengths, args.batch, args.dim, compiled=args.compile, train_steps=args.train_steps,
            threads=args.threads, device=args.device, out=args.out)
    return 0


def _bench_gpu_args(p: argparse.ArgumentParser) -> None:
    from linscan.bench.gpu import add_arguments
    add_arguments(p)


def _check_bench_gpu(args) -> None:
    """What ``linscan.bench.gpu`` would refuse (or fail on after the run), refused before it starts."""
    import torch

    from linscan.bench.gpu.run import GPU, SMOKE
    from linscan.bench.gpu.variants import select

    if not args.smoke and not torch.cuda.is_available():
        raise CliError("--smoke: required here: the full run needs a CUDA device and none is available")
    if args.lengths is not None:
        tokens = (SMOKE if args.smoke else GPU).tokens
        try:
            lengths = int_list(args.lengths)
        except argparse.ArgumentTypeError as e:
            raise CliError(f"--lengths: {e}") from None
        if max(lengths) > tokens:
            raise CliError(f"--lengths: expected values in [1, {tokens}], got {args.lengths!r}")
    try:
        select(args.only.split(",") if args.only else None)
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.budget_s is not None and not 0 < args.budget_s < math.inf:
        raise CliError(f"--budget-s: expected a finite number of seconds > 0, got {args.budget_s}")
    check_out_file(args.out)


def _bench_gpu(args) -> int:
    from linscan.bench.gpu import run_args

    _check_bench_gpu(args)
    return run_args(args)


def _bench_sp_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lengths", type=int_list, default=[4096, 16384, 65536], metavar="T,...",
                   help="sequence lengths (default 4096,16384,65536)")
    p.add_argument("--world", type=positive_int, default=4, help="ranks W (default 4)")
    p.add_argument("--families", default="decay,delta,mlstm,attention",
                   help="comma-separated from decay, delta, mlstm, attention")
    p.add_argument("--heads", type=positive_int, default=4, help="H (default 4)")
    p.add_argument("--head-dim", type=positive_int, default=64, help="K = V per head (default 64)")
    p.add_argument("--out", metavar="PATH.json", help="also write the results as JSON")


def _bench_sp(args) -> int:
    from linscan.bench import sp

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = sorted(set(families) - set(sp.FAMILIES))
    if bad or not families:
        raise CliError(f"--families: expected names from {list(sp.FAMILIES)}, got {args.families!r}")
    if args.world < 2:
        raise CliError(f"--world: expected at least 2 ranks, got {args.world}")
    odd = [T for T in args.lengths if T % args.world or T // args.world < 4]
    if odd:
        raise CliError(f"--lengths: expected multiples of --world {args.world} (at least 4 tokens per rank), got {odd}")
    check_out_file(args.out)
    sp.run(args.lengths, args.world, families=families, heads=args.heads, head_dim=args.head_dim, out=args.out)
    return 0


def _bench_mom_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=positive_int, default=4096, metavar="T", help="tokens (default 4096)")
    p.add_argument("--d-model", type=positive_int, default=256, help="width (default 256)")
    p.add_argument("--heads", type=positive_int, default=4, help="heads (default 4)")
    p.add_argument("--memories", type=positive_int, default=4, help="routed memories M (default 4)")
    p.add_argument("--top-k", type=positive_int, default=2, help="memories per token (default 2)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--out", metavar="PATH.json", help="also write the results as JSON")


def _bench_mom(args) -> int:
    from linscan.bench import mom

    if args.top_k > args.memories:
        raise CliError(f"--top-k: expected at most --memories {args.memories}, got {args.top_k}")
    if args.d_model % args.heads:
        raise CliError(f"--heads: expected a divisor of --d-model {args.d_model}, got {args.heads}")
    check_out_file(args.out)
    mom.run(args.length, d_model=args.d_model, n_heads=args.heads, n_memories=args.memories, top_k=args.top_k,
            threads=args.threads, out=args.out)
    return 0


def _bench_grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sides", type=int_list, default=[32, 64, 128], help="grid sides (default 32,64,128)")
    p.add_argument("--naive-max", type=positive_int, default=64,
                   help="largest side the cell loop runs at (default 64; it takes seconds per pass)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--out", metavar="PATH.json", help="also write the results as JSON")


def _bench_grid(args) -> int:
    from linscan.bench import grid

    check_out_file(args.out)
    grid.run(tuple(args.sides), naive_max=args.naive_max, threads=args.threads, out=args.out)
    return 0


def _bench_liger_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/bench-liger", metavar="DIR",
                   help="run folders, results.json, recovery.png (a finished teacher there is reused)")
    p.add_argument("--teacher-steps", type=positive_int, default=1500, help="pretraining steps (default 1500)")
    p.add_argument("--fraction", type=probability, default=0.02,
                   help="fine-tuning bytes as a share of the pretraining bytes (default 0.02)")
    p.add_argument("--lr", type=positive_float, default=1e-2,
                   help="LoRA fine-tuning learning rate (default 1e-2: best of 1e-3, 3e-3, 1e-2 for 120 steps)")
    p.add_argument("--variants", default=",".join(("liger_gla", "liger_gdn", "liger_attention")),
                   help="comma-separated: liger_gla, liger_gdn, liger_attention")
    p.add_argument("--seed", type=seed, default=0)


def _bench_liger(args) -> int:
    from linscan.bench import liger

    check_out_dir(args.out)
    try:
        liger.run(args.out, teacher_steps=args.teacher_steps, fraction=args.fraction, finetune_lr=args.lr,
                  variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()), seed=args.seed)
    except ValueError as e:
        raise option_error(e, {"variants": "--variants", "out": "--out"}) from e
    return 0


def _bench_lmul_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", default="runs/tiny", metavar="DIR",
                   help="a trained model with attention layers (default runs/tiny: the main job's)")
    p.add_argument("--data", default=None, metavar="PATH", help="validation text (default: the standard library)")
    p.add_argument("--eval-batches", type=positive_int, default=4, help="validation batches of 4 x 128 bytes")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write DIR/lmul.json")


def _bench_lmul(args) -> int:
    from linscan.bench import lmul
    from linscan.train.checkpoint import CheckpointError

    try:
        lmul.run(args.ckpt, data=args.data, eval_batches=args.eval_batches, threads=args.threads, out=args.out)
    except CheckpointError as e:
        raise CliError(f"--ckpt: {str(e).removeprefix('checkpoint: ')}") from e
    except ValueError as e:
        raise option_error(e, {"ckpt": "--ckpt", "data": "--data"}) from e
    return 0


def _module_bench(module: str):
    """``linscan bench <module>`` for a module with ``add_arguments(p)`` and ``run_args(args)`` whose
    ValueErrors name the API's arguments (the options without dashes)."""
    def add_arguments(p):
        import importlib
        importlib.import_module(f"linscan.bench.{module}").add_arguments(p)

    def handler(args) -> int:
        import importlib
        try:
            importlib.import_module(f"linscan.bench.{module}").run_args(args)
        except ValueError as e:
            raise option_error(e, {name: "--" + name.replace("_", "-") for name in vars(args)}) from e
        return 0

    return add_arguments, handler


BENCHMARKS = {
    "ops": ("scan ops vs their token loop and peers (fla, mlstm_kernels, SDPA)", _bench_ops_args, _bench_ops),
    "model": ("per-token decode time against context length, training tokens/s", _bench_model_args, _bench_model),
    "rnn": ("Newton-parallel nonlinear RNNs (ParaRNN) vs the sequential loop; convergence",
            _bench_rnn_args, _bench_rnn),
    "gpu": ("Triton kernels vs fla / mlstm_kernels / SDPA on a GPU: gate, times, memory, bars "
            "(--smoke: the CPU plumbing run)", _bench_gpu_args, _bench_gpu),
    "mom": ("a mixture-of-memories layer vs one Gated DeltaNet layer: fwd+bwd time and memory",
            _bench_mom_args, _bench_mom),
    "grid": ("2-D grid ops (pLSTM P/D, 2-D SSM): tiled and row-sweep backends vs the cell loop, forward and backward",
             _bench_grid_args, _bench_grid),
    "liger": ("pretrain attention, convert to Liger variants, LoRA fine-tune on 2% of the bytes; vs from scratch",
              _bench_liger_args, _bench_liger),
    "sp": ("sequence parallelism on W local gloo ranks: bytes sent, memory per rank, time", _bench_sp_args, _bench_sp),
    "tcnca": ("a TCNCA layer (dilated causal TCN + chunked attention) vs full attention: fwd+bwd time vs T",
              *_module_bench("tcnca")),
    "lcm": ("second minimum of a set: LCM (learnable commutative monoid) vs sum, mean, max, GRU; "
            "accuracy per set size, time per batch", *_module_bench("lcm")),
    "lmul": ("L-Mul vs float8 products (random and a trained model's attention operands); bits per byte "
             "with L-Mul attention", _bench_lmul_args, _bench_lmul),
}


def _bench_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (help_text, add_arguments, handler) in BENCHMARKS.items():
        q = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(q)
        q.set_defaults(handler=handler)


# ---------------------------------------------------------------- entry point

def _train_args(p):
    from linscan.train.commands import train_args
    train_args(p)


def _train(args) -> int:
    from linscan.train.commands import train
    return train(args)


def _generate_args(p):
    from linscan.train.commands import generate_args
    generate_args(p)


def _generate(args) -> int:
    from linscan.train.commands import generate
    return generate(args)


def _eval_args(p):
    from linscan.eval.commands import eval_args
    eval_args(p)


def _eval(args) -> int:
    from linscan.eval.commands import run_eval
    return run_eval(args)


def _linearize_args(p):
    from linscan.convert.commands import linearize_args
    linearize_args(p)


def _linearize(args) -> int:
    from linscan.convert.commands import linearize
    return linearize(args)


def _grid_task(module: str):
    """``linscan eval arrow`` / ``linscan eval forecast``: tasks on images and multivariate series,
    with their own options (``linscan.eval.<module>.add_arguments`` and ``run``)."""
    def add_arguments(p):
        import importlib
        importlib.import_module(f"linscan.eval.{module}").add_arguments(p)

    def handler(args) -> int:
        import importlib
        return importlib.import_module(f"linscan.eval.{module}").run(args)

    return add_arguments, handler


# eval tasks that are not token sequences: parsed by their own parser (``linscan eval arrow --help``)
EVAL_TASKS = {
    "arrow": ("arrow pointing: train image classifiers at one size, test at a larger one", *_grid_task("arrow")),
    "forecast": ("multivariate forecasting: the 2-D SSM against per-variate and linear baselines",
                 *_grid_task("forecast")),
}

COMMANDS = {
    "info": ("versions, devices and registered backends", _info_args, _info),
    "train": ("train a language model (default: tiny hybrid on the stdlib corpus)", _train_args, _train),
    "generate": ("generate text from a trained run with the recurrent cache", _generate_args, _generate),
    "eval": ("train a small model per mixer on a synthetic task; accuracy per test length", _eval_args, _eval),
    "linearize": ("convert attention layers to Liger layers, LoRA fine-tune, merge, save",
                  _linearize_args, _linearize),
    "bench": ("benchmarks (linscan bench ops --help)", _bench_args, None),
}


def _eval_task_parser(task: str) -> argparse.ArgumentParser:
    help_text, add_arguments, handler = EVAL_TASKS[task]
    parser = _Parser(prog=f"linscan eval {task}", description=help_text)
    add_arguments(parser)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="linscan", description="Linear-recurrent scans: ops, benchmarks, information.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        if handler is not None:
            p.set_defaults(handler=handler)
    return parser


def _passive_openmp(argv: list[str]) -> None:
    """Benchmarks and training: OpenMP threads that sleep rather than spin while they wait.

    On a shared machine a spinning thread whose partner was descheduled burns
    its time slice: 2-thread timings then come out 10-100x too slow and erratic.
    Read by OpenMP when torch is first imported; an explicit setting wins.
    """
    if argv[:1] in (["bench"], ["train"], ["generate"], ["eval"], ["linearize"]) and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _passive_openmp(argv)
    if argv[:1] == ["eval"] and argv[1:2] and argv[1] in EVAL_TASKS:
        args = _eval_task_parser(argv[1]).parse_args(argv[2:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CliError as e:
        print(f"linscan: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("linscan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # ``python -m linscan.cli``: run the package's module, whose CliError the subcommands raise
    # (this file, run as __main__, is a second module with a second CliError class)
    from linscan.cli import main as package_main

    sys.exit(package_main())
