"""``linscan linearize``: convert a model's attention layers to Liger layers, LoRA fine-tune, merge, save."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..nn.mixers.liger import RECURRENCES

OPTIONS = {"source": "--from", "recurrence": "--to", "window": "--window", "keep_attention_every": "--keep-attention",
           "recurrent_weight": "--recurrent-weight", "rank": "--lora-rank", "steps": "--steps", "seq_len": "--seq-len",
           "batch_size": "--batch-size", "data": "--data", "out": "--out"}


def linearize_args(p: argparse.ArgumentParser) -> None:
    from ..cli import non_negative_int, positive_float, positive_int, probability, seed

    p.add_argument("--from", dest="source", required=True, metavar="DIR",
                   help="a linscan run/checkpoint folder with attention layers, or a Hugging Face Llama folder")
    p.add_argument("--to", dest="recurrence", choices=RECURRENCES, default="gla", help="the recurrence (default gla)")
    p.add_argument("--window", type=non_negative_int, default=64,
                   help="Liger Attention's sliding window (default 64, the paper's); 0: pure Liger, no softmax branch")
    p.add_argument("--recurrent-weight", type=probability, default=0.5,
                   help="share of the recurrent branch in Liger Attention (default 0.5)")
    p.add_argument("--keep-attention", dest="keep_attention_every", type=positive_int, default=None, metavar="N",
                   help="keep every N-th attention layer as softmax attention (default: convert all)")
    p.add_argument("--lora-rank", dest="rank", type=positive_int, default=8, help="LoRA rank on q, k, v (default 8)")
    p.add_argument("--steps", type=non_negative_int, default=100, help="fine-tuning steps (0: convert only)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seq-len", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate (default 1e-3, Liger's)")
    p.add_argument("--warmup", type=non_negative_int, default=0)
    p.add_argument("--eval-every", type=positive_int, default=50)
    p.add_argument("--eval-batches", type=positive_int, default=16)
    p.add_argument("--ckpt-every", type=positive_int, default=100)
    p.add_argument("--data", default=None, help="training text file (default: the embedded corpus)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="DIR/model (the merged model), DIR/finetune (the fine-tuning run), DIR/linearize.json")
    p.add_argument("--resume", action="store_true", help="continue the fine-tuning run in DIR/finetune")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def linearize(args) -> int:
    """The command: prints one line per stage and the table of validation bits per byte."""
    from ..cli import CliError, check_device, check_out_dir, option_error
    from ..train.checkpoint import CheckpointError
    from ..train.commands import check_data
    from ..train.loop import TrainArgs, TrainingDiverged
    from .recipe import linearize_model

    check_device(args.device)
    check_out_dir(args.out)
    if args.steps > 0:
        check_data(args.data, args.seq_len)
    train_args = TrainArgs(data=args.data, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                           lr=args.lr, weight_decay=0.0, warmup=args.warmup, eval_every=args.eval_every,
                           eval_batches=args.eval_batches, ckpt_every=args.ckpt_every,
                           out=str(Path(args.out) / "finetune"), resume=args.resume, seed=args.seed,
                           device=args.device, progress=args.progress)
    try:
        report = linearize_model(args.source, train_args, recurrence=args.recurrence, window=args.window or None,
                                 recurrent_weight=args.recurrent_weight, keep_attention_every=args.keep_attention_every,
                                 rank=args.rank, out=args.out, log=sys.stderr)
    except (TrainingDiverged, CheckpointError, FileNotFoundError) as e:
        raise CliError(str(e)) from e
    except (ValueError, ImportError) as e:
        raise option_error(e, OPTIONS) from e
    print(json.dumps({k: v for k, v in report.items() if k != "model"}, indent=2))
    return 0
