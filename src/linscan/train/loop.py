"""The training loop: reads top to bottom.

Batches are a pure function of (seed, step, rank) (``linscan.data.batch_at``),
so a resumed run sees exactly the batches the uninterrupted run would have:
with weights, optimiser, scheduler and RNG restored, its next loss is equal.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..data import batch_at, load_corpus, unigram_entropy_bits
from ..models import LinscanConfig, LinscanForCausalLM, preset
from . import checkpoint
from .optim import make_optimizer, make_scheduler
from .plot import plot_losses
from .progress import Progress

LN2 = math.log(2)


@dataclass
class TrainArgs:
    preset: str = "tiny"
    pattern: str | None = None
    data: str | None = None
    steps: int = 600
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 50
    clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 16
    ckpt_every: int = 200
    out: str = "runs/tiny"
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _config(args: TrainArgs) -> LinscanConfig:
    overrides = {"pattern": args.pattern} if args.pattern else {}
    config = preset(args.preset, **overrides)
    if args.resume and (Path(args.out) / "latest").exists():
        saved = checkpoint.load_config(args.out)
        if saved.to_dict() != config.to_dict():
            raise checkpoint.CheckpointError(
                f"--resume: the checkpoint in {args.out} was trained with {saved.to_dict()}, not with "
                f"--preset {args.preset} {overrides or ''} = {config.to_dict()}")
    return config


@torch.no_grad()
def evaluate(model, data: torch.Tensor, args: TrainArgs, device, autocast) -> float:
    """Validation loss in bits per byte over fixed windows (the same at every evaluation)."""
    model.eval()
    total = 0.0
    for i in range(args.eval_batches):
        x, y = batch_at(data, i, args.batch_size, args.seq_len, seed=10_007)
        with autocast():
            total += model(x.to(device), labels=y.to(device)).loss.item()
    model.train()
    return total / args.eval_batches / LN2


def train(args: TrainArgs) -> dict:
    """Train a model as ``args`` says; returns a summary (final validation bits per byte, speed...)."""
    device = _device(args.device)
    rank, world = _distributed(device)
    main = rank == 0
    out = Path(args.out)
    config = _config(args)
    corpus = load_corpus(args.data)
    torch.manual_seed(args.seed)
    model = LinscanForCausalLM(config).to(device)
    optimizer = make_optimizer(model, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = make_scheduler(optimizer, warmup=args.warmup, total=args.steps)
    start = 0
    if args.resume and (out / "latest").exists():
        checkpoint.load_weights(out, model)
        state = checkpoint.load_trainer_state(out)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
    elif args.resume and main:
        print(f"--resume: no checkpoint in {out}, starting fresh", file=sys.stderr)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    if main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.json")
        (out / "args.json").write_text(json.dumps(asdict(args), indent=2))
        print(f"linscan train: {model.num_parameters():,} parameters, layers {''.join(config.pattern)} x "
              f"{config.n_layers}, data {corpus.source} ({len(corpus.train):,} train bytes), "
              f"{world} process(es) on {device}", file=sys.stderr)
    metrics = open(out / "metrics.jsonl", "a") if main else None
    progress = Progress(args.steps, start, enabled=main and args.progress)
    summary = {"start_step": start, "losses": []}
    step = start
    t0 = time.perf_counter()
    try:
        for step in range(start, args.steps):
            loss_sum = 0.0
            for micro in range(args.grad_accum):
                index = (step * args.grad_accum + micro) * world + rank
                x, y = batch_at(corpus.train, index, args.batch_size, args.seq_len, seed=args.seed)
                with autocast():
                    loss = ddp(x.to(device), labels=y.to(device)).loss / args.grad_accum
                loss.backward()
                loss_sum += loss.item()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip).item()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            summary["losses"].append(loss_sum)
            row = {"step": step + 1, "train_bpb": loss_sum / LN2, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": grad_norm}
            tokens = args.batch_size * args.seq_len * args.grad_accum * world
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                row["val_bpb"] = evaluate(model, corpus.val, args, device, autocast)
                summary["val_bpb"] = row["val_bpb"]
            if main:
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                progress.update(step, tokens, loss=row["train_bpb"], **({"val": row["val_bpb"]} if "val_bpb" in row else {}))
            if main and ((step + 1) % args.ckpt_every == 0 or step + 1 == args.steps):
                _save(out, model, config, optimizer, scheduler, step + 1)
    except KeyboardInterrupt:
        if main:
            progress.close()
            path = _save(out, model, config, optimizer, scheduler, step)
            print(f"interrupted: saved {path}; continue with --resume", file=sys.stderr)
        raise
    finally:
        if metrics:
            metrics.close()
    elapsed = time.perf_counter() - t0
    progress.close()
    summary |= {"steps": args.steps, "seconds": elapsed, "config": config.to_dict(),
                "tokens_per_s": (args.steps - start) * args.batch_size * args.seq_len * args.grad_accum * world / elapsed,
                "unigram_bpb": unigram_entropy_bits(corpus.val), "parameters": model.num_parameters()}
    if main:
        plot_losses(out / "metrics.jsonl", out / "loss.png")
        (out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2))
    summary["model"] = model          # for callers that go on (generation, tests); not serialised
    return summary


def _save(out, model, config, optimizer, scheduler, step):
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": torch.get_rng_state()}
    return checkpoint.save(out, model, config, state)
