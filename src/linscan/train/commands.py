"""``linscan train`` and ``linscan generate``: argument parsing and the one-line errors around them."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path



def train_args(p: argparse.ArgumentParser) -> None:
    from .loop import TrainArgs

    d = TrainArgs()
    p.add_argument("--preset", default=d.preset, help=f"model preset (default {d.preset})")
    p.add_argument("--pattern", default=None, help="mixer letters, repeated over the layers, e.g. DDDA")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="text file or folder (default: this Python's standard library sources)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--sample", type=int, default=200, metavar="N",
                   help="after training, generate N bytes from the model (0: none)")


def train(args) -> int:
    import torch

    from ..data import load_corpus  # noqa: F401  (fail early below on a bad --data)
    from ..models import preset
    from .checkpoint import CheckpointError
    from .loop import TrainArgs, train as run

    error = _validate(args)
    if error:
        return _fail(error)
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    targs = TrainArgs(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        preset(targs.preset, **({"pattern": targs.pattern} if targs.pattern else {}))
        summary = run(targs)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        return _fail(str(e))
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
        prompt = "def "
        text = _generate(model, prompt, args.sample, temperature=0.8, top_k=None, top_p=0.95, seed=0)
        print(f"sample (recurrent cache, temperature 0.8, top-p 0.95):\n{text}")
    return 0


def _validate(args) -> str | None:
    if args.data is not None and not Path(args.data).exists():
        return f"--data: no such file or folder: {args.data}"
    for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "ckpt_every"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}"
    return None


def generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run folder or checkpoint folder")
    p.add_argument("--prompt", default="def ", help="text to continue (bytes, UTF-8)")
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)


def generate(args) -> int:
    from ..models import LinscanForCausalLM
    from . import checkpoint

    try:
        config = checkpoint.load_config(args.ckpt)
        model = LinscanForCausalLM(config)
        checkpoint.load_weights(args.ckpt, model)
    except checkpoint.CheckpointError as e:
        return _fail(str(e))
    if config.vocab_size != 256:
        return _fail(f"--ckpt: expected a byte-level model (vocab 256), got vocab {config.vocab_size}")
    print(_generate(model.eval(), args.prompt, args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, seed=args.seed))
    return 0


def _generate(model, prompt: str, n: int, *, temperature, top_k, top_p, seed) -> str:
    import torch

    ids = torch.tensor([list(prompt.encode())], dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    out = model.generate(ids, n, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
    return bytes(out[0].tolist()).decode("utf-8", errors="replace")


def _fail(message: str) -> int:
    print(f"linscan: error: {message}", file=sys.stderr)
    return 1
