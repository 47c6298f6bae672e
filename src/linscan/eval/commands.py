"""``linscan eval TASK [--mixers LIST]``: argument parsing, the printed tables and one-line errors.

Malformed numbers and ranges are usage errors (exit status 2); everything else
``linscan.eval.run`` checks before its first training step, and its ValueError
(which names the API argument, e.g. ``train_lengths``) is printed with the
option's name (``--train-len``), exit status 1.
"""

from __future__ import annotations

import argparse

# linscan.eval.run's argument names -> this command's
OPTIONS = {"task": "TASK", "mixers": "--mixers", "train_lengths": "--train-len", "test_lengths": "--test-len",
           "seeds": "--seeds", "task_options": "--task-option", "steps": "--steps", "batch_size": "--batch-size",
           "lr": "--lr", "n_layers": "--layers", "d_model": "--d-model", "n_heads": "--heads", "head_dim": "--head-dim", "eval_sequences": "--eval-sequences",
           "out": "--out"}


def length_range(text: str) -> tuple[int, int]:
    """``"3..40"`` -> (3, 40) (inclusive)."""
    lo, sep, hi = text.partition("..")
    try:
        value = (int(lo), int(hi)) if sep else None
    except ValueError:
        value = None
    if value is None or not 1 <= value[0] <= value[1]:
        raise argparse.ArgumentTypeError(f"expected a length range LO..HI with 1 <= LO <= HI, got {text!r}")
    return value


def task_option(text: str) -> tuple[str, object]:
    """``"num_pairs=16"`` -> ("num_pairs", 16); values parse as int, float, true/false, else string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    value: object = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                pass
    return key.strip(), value


def eval_args(p: argparse.ArgumentParser) -> None:
    from ..cli import positive_float, positive_int
    from .mixers import NAMES

    p.epilog = (f"Mixers: {', '.join(NAMES)}, or hybrids 'first+second R:S' (e.g. 'gated_deltanet+attention 3:1' "
                "= pattern DDDA). Defaults for model size, steps, batch size and lr: the task's preset "
                "(linscan.eval.presets).")
    p.add_argument("task", help="parity, arith, arith_brackets, s3, a5, s5 or mqar (and, with their own options: arrow, forecast)")
    p.add_argument("--mixers", default=None,
                   help="comma-separated mixer names (default: the task preset's comparison)")
    p.add_argument("--train-len", type=length_range, default=None, metavar="A..B",
                   help="training lengths (default: the task preset's)")
    p.add_argument("--test-len", type=length_range, default=None, metavar="C..D",
                   help="test lengths, split into buckets (default: the task preset's)")
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--seeds", type=positive_int, default=1, help="runs per mixer (seeds 0..S-1, default 1)")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--layers", type=positive_int, default=None, help="depth (default: the task preset's)")
    p.add_argument("--d-model", type=positive_int, default=None, help="width (default: the task preset's)")
    p.add_argument("--heads", type=positive_int, default=None, help="heads of every mixer (default: the task preset's)")
    p.add_argument("--head-dim", type=positive_int, default=None,
                   help="dimension per head (default: width / heads); sets the recurrent state size")
    p.add_argument("--eval-sequences", type=positive_int, default=None, help="sequences per length bucket")
    p.add_argument("--task-option", type=task_option, action="append", default=[], metavar="KEY=VALUE",
                   help="task constructor option, repeatable (e.g. num_pairs=16)")
    p.add_argument("--out", default=None, metavar="DIR", help="write DIR/results.json and DIR/accuracy.png")


def run_eval(args) -> int:
    from ..cli import option_error
    from .mixers import parse_mixers
    from .report import format_table
    from .runner import run

    try:
        specs = None if args.mixers is None else parse_mixers(args.mixers)
        results = run(args.task, specs, train_lengths=args.train_len, test_lengths=args.test_len, seeds=args.seeds,
                      out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      n_layers=args.layers, d_model=args.d_model, n_heads=args.heads,
                      head_dim=args.head_dim, eval_sequences=args.eval_sequences,
                      task_options=dict(args.task_option))
    except ValueError as e:
        raise option_error(e, OPTIONS) from e
    print(format_table(results, "acc"))
    finished = [run_ for m in results["mixers"].values() for run_ in m["runs"] if run_["buckets"] is not None]
    if any(r["seq_acc"] != r["acc"] for run_ in finished for r in run_["buckets"]):
        print()
        print(format_table(results, "seq_acc"))
    print(f"\nwall time {results['wall_seconds']:.0f} s" + (f"; wrote {args.out}/results.json, accuracy.png"
                                                            if args.out else ""))
    return 0
