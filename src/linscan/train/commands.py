"""``linscan train`` and ``linscan generate``: argument parsing and the one-line errors around them.

Every argument is checked before any work: a malformed or out-of-range value is
an argparse usage error (exit status 2, from the ``type=`` functions of
``linscan.cli``); a preset, pattern, device, data path or run folder that does
not fit is a ``CliError`` (exit status 1). Both name the option, what was
expected and what was given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from ..cli import (CliError, check_device, check_out_dir, non_negative_float, non_negative_int, option_error,
                   positive_float, positive_int, probability, seed)


def train_args(p: argparse.ArgumentParser) -> None:
    from .loop import TrainArgs

    d = TrainArgs()
    p.add_argument("--preset", default=d.preset, help=f"model preset (default {d.preset})")
    p.add_argument("--pattern", default=None, help="mixer letters, repeated over the layers, e.g. DDDA")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="text file or folder (default: this Python's standard library sources)")
    p.add_argument("--steps", type=positive_int, default=d.steps)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--seq-len", type=positive_int, default=d.seq_len)
    p.add_argument("--grad-accum", type=positive_int, default=d.grad_accum)
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--weight-decay", type=non_negative_float, default=d.weight_decay)
    p.add_argument("--warmup", type=non_negative_int, default=d.warmup)
    p.add_argument("--eval-every", type=positive_int, default=d.eval_every)
    p.add_argument("--ckpt-every", type=positive_int, default=d.ckpt_every)
    p.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--seed", type=seed, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--sequence-parallel", type=positive_int, default=d.sequence_parallel, metavar="W",
                   help="under torchrun: W ranks share each sequence (LASP-2), data parallel over the rest")
    p.add_argument("--sample", type=non_negative_int, default=200, metavar="N",
                   help="after training, generate N bytes from the model (0: none)")


def train(args) -> int:
    import torch

    from .checkpoint import CheckpointError
    from .loop import TrainArgs, train as run

    _check_train(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    targs = TrainArgs(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        summary = run(targs)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        raise CliError(str(e)) from e
    if torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
        torch.distributed.barrier()               # every rank finished before the group is torn down
        torch.distributed.destroy_process_group()
        if rank != 0:
            return 0                              # data parallel: rank 0 reports
    print(f"validation: {summary['val_bpb']:.3f} bits per byte after {summary['steps']} steps "
          f"(unigram entropy of the validation bytes: {summary['unigram_bpb']:.3f}); "
          f"{summary['tokens_per_s']:,.0f} tokens/s; run folder {targs.out}")
    if args.sample:
        model = summary["model"].eval()
        text = _generate(model, b"def ", args.sample, temperature=0.8, top_k=None, top_p=0.95, seed=0)
        print(f"sample (recurrent cache, temperature 0.8, top-p 0.95):\n{text}")
    return 0


def _check_train(args) -> None:
    """Everything ``train`` would otherwise fail on after minutes (or with a traceback), refused now."""
    from ..models import preset

    try:
        preset(args.preset, **({} if args.pattern is None else {"pattern": args.pattern}))
    except ValueError as e:
        raise option_error(e, {"preset": "--preset", "pattern": "--pattern"}) from e
    check_device(args.device)
    check_out_dir(args.out)
    check_data(args.data, args.seq_len)
    _check_sequence_parallel(args)


def _check_sequence_parallel(args) -> None:
    """``--sequence-parallel W``: W divides the processes and --seq-len; no nonlinear mixers."""
    W = args.sequence_parallel
    if W == 1:
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % W:
        raise CliError(f"--sequence-parallel: expected a divisor of the {world} processes (WORLD_SIZE; launch "
                       f"with torchrun --nproc_per_node ...), got {W}")
    if args.seq_len % W or args.seq_len // W < 4:
        raise CliError(f"--sequence-parallel: expected a divisor of --seq-len {args.seq_len} leaving at least "
                       f"4 tokens per rank, got {W}")
    from ..models import preset

    pattern = preset(args.preset, **({} if args.pattern is None else {"pattern": args.pattern})).pattern
    nonlinear = sorted(set(pattern) & set("UCZ"))
    if nonlinear:
        raise CliError(f"--sequence-parallel: needs linear recurrences; the pattern's {nonlinear} are "
                       f"Newton-parallel nonlinear RNNs")


def check_data(path: str | None, seq_len: int) -> None:
    """``--data`` exists, holds text, and both its splits are longer than ``--seq-len`` (+ 1 target byte)."""
    from ..data.corpus import split_sizes

    if path is not None and not Path(path).exists():
        raise CliError(f"--data: no such file or folder: {path}")
    try:
        train, val, source = split_sizes(path)
    except ValueError as e:
        raise option_error(e, {"data": "--data"}) from e
    except OSError as e:
        raise CliError(f"--data: cannot read {e.filename or path}: {e.strerror}") from e
    if min(train, val) < 3:
        raise CliError(f"--data: expected at least 3 bytes in each of the training and validation splits (95% / 5%), "
                       f"got {train} and {val} from {source}")
    for split, size in (("training", train), ("validation", val)):
        if seq_len + 2 > size:
            raise CliError(f"--seq-len: expected at most {size - 2} (the {split} split of {source} has {size} bytes), "
                           f"got {seq_len}")


def prompt_bytes(text: str) -> bytes:
    """``--prompt``: non-empty text, UTF-8 encoded (the model reads bytes)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:            # arguments that were not UTF-8 arrive as lone surrogates
        raise argparse.ArgumentTypeError(f"expected UTF-8 text, got the bytes {os.fsencode(text)!r}") from None
    if not data:
        raise argparse.ArgumentTypeError("expected at least one character, got ''")
    return data


def generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run folder or checkpoint folder")
    p.add_argument("--prompt", type=prompt_bytes, default="def ", help="text to continue (UTF-8, non-empty)")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=300)
    p.add_argument("--temperature", type=non_negative_float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample from the k most likely bytes")
    p.add_argument("--top-p", type=probability, default=None, help="nucleus sampling, in (0, 1]")
    p.add_argument("--seed", type=seed, default=0)


def generate(args) -> int:
    from . import checkpoint

    try:
        model = checkpoint.load_model(args.ckpt)
    except checkpoint.CheckpointError as e:
        raise CliError(f"--ckpt: {str(e).removeprefix('checkpoint: ')}") from e
    if model.config.vocab_size != 256:
        raise CliError(f"--ckpt: expected a byte-level model (vocab 256), got vocab {model.config.vocab_size}")
    print(_generate(model, args.prompt, args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, seed=args.seed))
    return 0


def _generate(model, prompt: bytes, n: int, *, temperature, top_k, top_p, seed) -> str:
    import torch

    ids = torch.tensor([list(prompt)], dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    out = model.generate(ids, n, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
    return bytes(out[0].tolist()).decode("utf-8", errors="replace")
