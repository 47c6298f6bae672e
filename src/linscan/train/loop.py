"""The training loop: reads top to bottom.

Batches are a pure function of (seed, step, rank) (``linscan.data.batch_at``),
so a resumed run sees exactly the batches the uninterrupted run would have:
with weights, optimiser, scheduler and RNG restored, its losses are equal bit for bit.

The run folder (``TrainArgs.out``) holds ``metrics.jsonl`` (one row per optimiser update:
``step``, ``train_bpb``, ``lr``, ``grad_norm``, ``val_bpb`` at evaluations, and ``aux_loss`` with
mixture-of-memories layers),
``loss.png``, ``summary.json``, ``config.json``, ``args.json`` and checkpoints
(``linscan.train.checkpoint``): ``step-N`` is always the state after N updates.

- A fresh run (``resume=False``) refuses a folder that already holds a run (``latest``,
  ``step-*`` or ``metrics.jsonl``) with a ``ValueError``, deleting nothing: continue it with
  ``--resume`` or choose another ``--out``.
- ``resume=True`` continues from ``latest`` (or starts fresh where there is none). Rows of
  ``metrics.jsonl`` past the checkpoint's step (written, then lost to a crash or a forced
  stop) are dropped first, so the file reads as one uninterrupted run. A ``steps`` at or
  below the checkpoint's step (a finished run) is refused with a ``ValueError``.
- Ctrl-C (SIGINT) lets the step in progress finish, saves ``step-N`` (the N updates done)
  and raises ``KeyboardInterrupt``. A Ctrl-C during a checkpoint write never interrupts it.
  A second Ctrl-C before the save starts stops at once and saves nothing: the last
  checkpoint stays as it was. Only the main thread can catch signals; elsewhere Ctrl-C
  handling is Python's default.
- A non-finite loss or gradient norm stops training before that update is applied, with a
  ``TrainingDiverged`` (a ``ValueError``) naming the step; no checkpoint with non-finite
  weights is ever written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
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
    sequence_parallel: int = 1


class TrainingDiverged(ValueError):
    """The loss, gradient norm or weights stopped being finite; names the step."""


@dataclass
class _Run:
    """What one training run works with, passed whole to the helpers below."""

    args: TrainArgs
    out: Path
    config: LinscanConfig
    model: LinscanForCausalLM
    ddp: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    rank: int
    world: int
    sequence: object = None          # linscan.parallel.comm.Ranks of this rank's sequence-parallel group

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def replicas(self) -> int:
        """Data-parallel replicas: the ranks that see different sequences."""
        return self.world // (1 if self.sequence is None else self.sequence.world)

    @property
    def replica(self) -> int:
        return self.rank // (1 if self.sequence is None else self.sequence.world)

    def autocast(self):
        return autocast(self.device)


def autocast(device: torch.device):
    """The training precision: bfloat16 autocast on CUDA, none on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Interrupts:
    """SIGINT while training: the first asks to stop after the step in progress; a second one
    raises ``KeyboardInterrupt`` at once, except while ``deferred()`` (a checkpoint write),
    when every SIGINT only asks to stop."""

    def __init__(self):
        self.requested = False
        self.deferring = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame):
        if self.requested and not self.deferring:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def deferred(self):
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False


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


def _sequence_group(args: TrainArgs, rank: int, world: int):
    """The sequence-parallel group of ``rank``: ranks k W .. (k + 1) W - 1 share their sequences
    (W = ``args.sequence_parallel``), data parallel across the groups; None for W = 1."""
    W = args.sequence_parallel
    if W == 1:
        return None
    if world % W:
        raise ValueError(f"--sequence-parallel: expected a divisor of the {world} processes, got {W}")
    if args.seq_len % W:
        raise ValueError(f"--sequence-parallel: expected a divisor of --seq-len {args.seq_len}, got {W}")
    from ..parallel import comm

    # every rank creates every group, in the same order (torch.distributed requires it); a group of
    # its own even when W == world, so that its collectives never interleave with DDP's
    groups = [dist.new_group(list(range(k * W, (k + 1) * W))) for k in range(world // W)]
    return comm.resolve(groups[rank // W])


def _slice(run: _Run, x: torch.Tensor) -> torch.Tensor:
    """This rank's part of every sequence of ``x [B, T]`` (all of it without sequence parallelism)."""
    if run.sequence is None:
        return x
    L = x.shape[1] // run.sequence.world
    return x[:, run.sequence.rank * L:(run.sequence.rank + 1) * L]


def _sequence_mean(run: _Run, value: float) -> float:
    """The mean of a per-rank loss over the sequence-parallel group (the whole sequences' loss)."""
    if run.sequence is None:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=run.device)
    dist.all_reduce(t, group=run.sequence.group)
    return t.item() / run.sequence.world


def _config(args: TrainArgs, model: LinscanForCausalLM | None = None) -> LinscanConfig:
    if model is not None:
        config, given = model.config, "the model passed in"
    else:
        overrides = {"pattern": args.pattern} if args.pattern else {}
        config, given = preset(args.preset, **overrides), f"--preset {args.preset} {overrides or ''}"
    if args.resume and (Path(args.out) / "latest").exists():
        saved = checkpoint.load_config(args.out)
        if saved.to_dict() != config.to_dict():
            raise checkpoint.CheckpointError(
                f"--resume: the checkpoint in {args.out} was trained with {saved.to_dict()}, not with "
                f"{given} = {config.to_dict()}")
    return config


def _saved_state(args: TrainArgs, out: Path, main: bool) -> dict | None:
    """The trainer state to resume from (None: start fresh), after refusing runs that cannot start."""
    if not args.resume:
        found = [p.name for p in (out / "latest", out / "metrics.jsonl") if p.exists()]
        found += sorted(p.name for p in out.glob("step-*"))
        if found:
            raise ValueError(f"--out: {out} already holds a run ({', '.join(found[:3])}); continue it with "
                             "--resume, or choose another --out (nothing was deleted)")
        return None
    if not (out / "latest").exists():
        if main:
            print(f"--resume: no checkpoint in {out}, starting fresh", file=sys.stderr)
        return None
    state = checkpoint.load_trainer_state(out)
    if state["step"] >= args.steps:
        raise ValueError(f"--steps: the run in {out} is already at step {state['step']} "
                         f"({checkpoint.latest(out).name}), so --steps {args.steps} leaves nothing to train; "
                         f"pass --steps above {state['step']} to continue it")
    return state


def _restore(run: _Run, state: dict) -> int:
    """Load weights, optimiser, scheduler and RNG states; returns the step to start from."""
    checkpoint.load_weights(run.out, run.model)
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise checkpoint.CheckpointError(
            f"checkpoint: the trainer state in {checkpoint.latest(run.out)} does not fit this run: {e!r}") from e
    return state["step"]


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop the rows of ``metrics.jsonl`` after ``step`` (and any line cut short) before resuming."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue                 # a row cut short by a forced stop or a crash
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    checkpoint.replace_file(path, "".join(kept).encode())


@torch.no_grad()
def evaluate(model, data: torch.Tensor, args: TrainArgs, device, autocast, run: _Run | None = None) -> float:
    """Validation loss in bits per byte over fixed windows (the same at every evaluation).

    run: under sequence parallelism, each rank scores its part of the windows and the ranks'
    losses are averaged."""
    model.eval()
    total = 0.0
    for i in range(args.eval_batches):
        x, y = batch_at(data, i, args.batch_size, args.seq_len, seed=10_007)
        if run is not None:
            x, y = _slice(run, x), _slice(run, y)
        with autocast():
            out = model(x.to(device), labels=y.to(device))
        balance = 0.0 if out.aux_loss is None else model.config.aux_loss_coef * out.aux_loss.item()
        total += out.loss.item() - balance                  # cross-entropy only
    model.train()
    total = total if run is None else _sequence_mean(run, total)
    return total / args.eval_batches / LN2


def _update(run: _Run, train_data: torch.Tensor, step: int) -> tuple[float, float, float | None]:
    """Optimiser update number ``step + 1``: (cross-entropy summed over the micro-batches, gradient norm
    before clipping, the mixture-of-memories balance loss or None). The model minimises
    cross-entropy + ``aux_loss_coef`` x balance loss.

    Refuses to apply an update from a non-finite loss or gradient: it would poison every
    weight, and every checkpoint after it.
    """
    args = run.args
    loss_sum, aux_sum = 0.0, None
    for micro in range(args.grad_accum):
        index = (step * args.grad_accum + micro) * run.replicas + run.replica
        x, y = batch_at(train_data, index, args.batch_size, args.seq_len, seed=args.seed)
        x, y = _slice(run, x), _slice(run, y)
        with run.autocast():
            out = run.ddp(x.to(run.device), labels=y.to(run.device))
        (out.loss / args.grad_accum).backward()
        if out.aux_loss is None:
            loss_sum += out.loss.item() / args.grad_accum
        else:
            aux = out.aux_loss.item()
            aux_sum = (aux_sum or 0.0) + aux / args.grad_accum
            loss_sum += (out.loss.item() - run.config.aux_loss_coef * aux) / args.grad_accum
    loss_sum = _sequence_mean(run, loss_sum)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.clip).item()
    if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
        raise TrainingDiverged(
            f"training diverged at step {step + 1}: expected a finite loss and gradient norm, got loss {loss_sum}, "
            f"gradient norm {grad_norm}; that update was "
            f"not applied and the last checkpoint kept ({_latest_name(run.out)}); try a lower --lr (now {args.lr:g})")
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm, aux_sum


def _latest_name(out: Path) -> str:
    try:
        path = checkpoint.latest(out)
    except checkpoint.CheckpointError:
        path = None
    return str(path) if path else "none"


def _save(run: _Run, step: int, metrics) -> Path | None:
    """Checkpoint the state after ``step`` updates (rank 0 writes), its metrics rows made durable first."""
    # every rank checks (the weights are the same everywhere), so all stop together
    if not all(torch.isfinite(p).all() for p in run.model.parameters()):
        raise TrainingDiverged(f"training diverged at step {step}: expected finite weights, got NaN or inf; "
                               f"not saved, the last checkpoint kept ({_latest_name(run.out)}); "
                               f"try a lower --lr (now {run.args.lr:g})")
    if not run.main:
        return None
    metrics.flush()
    os.fsync(metrics.fileno())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    state = {"step": step, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "rng": {"cpu": torch.get_rng_state(), "cuda": cuda_rng}}
    return checkpoint.save(run.out, run.model, run.config, state)


def _stop_requested(run: _Run, requested: bool) -> bool:
    """Whether any rank was asked to stop: all ranks must leave the loop at the same step."""
    if run.world == 1:
        return requested
    flag = torch.tensor([float(requested)], device=run.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _start_folder(run: _Run, start: int, corpus) -> None:
    """Rank 0: the run folder with its config, args and metrics up to ``start``; the banner line."""
    run.out.mkdir(parents=True, exist_ok=True)
    # replaced atomically: a Ctrl-C here (Python's default handler still) must not leave half a file
    checkpoint.replace_file(run.out / "config.json", json.dumps(run.config.to_dict(), indent=2).encode())
    checkpoint.replace_file(run.out / "args.json", json.dumps(asdict(run.args), indent=2).encode())
    _keep_metrics_until(run.out / "metrics.jsonl", start)
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    shown = "" if trainable == run.model.num_parameters() else f" ({trainable:,} trained)"
    print(f"linscan train: {run.model.num_parameters():,} parameters{shown}, layers {''.join(run.config.pattern)} x "
          f"{run.config.n_layers}, data {corpus.source} ({len(corpus.train):,} train bytes), "
          f"{run.world} process(es) on {run.device}", file=sys.stderr)


def train(args: TrainArgs, model: LinscanForCausalLM | None = None) -> dict:
    """Train a model as ``args`` says; returns a summary (final validation bits per byte, speed...).

    model: fine-tune this model instead of a fresh ``args.preset`` one (its config is the run's;
    only its parameters with ``requires_grad`` train, e.g. LoRA adapters). To resume such a run,
    pass a model built the same way: the checkpoint's weights replace its own.
    """
    device = _device(args.device)
    rank, world = _distributed(device)
    out = Path(args.out)
    config = _config(args, model)
    state = _saved_state(args, out, main=rank == 0)
    corpus = load_corpus(args.data)
    torch.manual_seed(args.seed)
    model = (LinscanForCausalLM(config) if model is None else model).to(device)
    sequence = _sequence_group(args, rank, world)
    if sequence is not None:
        from ..parallel import sequence_parallel

        sequence_parallel(model, sequence.group)
    optimizer = make_optimizer(model, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = make_scheduler(optimizer, warmup=args.warmup, total=args.steps)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    run = _Run(args, out, config, model, ddp, optimizer, scheduler, device, rank, world, sequence)
    start = _restore(run, state) if state else 0
    if run.main:
        _start_folder(run, start, corpus)
    t0 = time.perf_counter()
    summary = _loop(run, corpus, start)
    elapsed = time.perf_counter() - t0
    tokens = (args.steps - start) * args.batch_size * args.seq_len * args.grad_accum * run.replicas
    summary |= {"steps": args.steps, "seconds": elapsed, "config": config.to_dict(), "tokens_per_s": tokens / elapsed,
                "unigram_bpb": unigram_entropy_bits(corpus.val), "parameters": model.num_parameters()}
    if run.main:
        plot_losses(out / "metrics.jsonl", out / "loss.png")
        kept = {k: v for k, v in summary.items() if k != "losses"}
        checkpoint.replace_file(out / "summary.json", json.dumps(kept, indent=2).encode())
    if sequence is not None:
        for module in model.modules():   # one device again: generation after training needs the whole model
            module.sequence_group = None
    summary["model"] = model          # for callers that go on (generation, tests); not serialised
    return summary


def _loop(run: _Run, corpus, start: int) -> dict:
    """Steps ``start + 1 .. args.steps``: update, log a row, checkpoint; Ctrl-C as the module says."""
    args = run.args
    summary = {"start_step": start, "losses": []}
    progress = Progress(args.steps, start, enabled=run.main and args.progress)
    saved, step = start, start
    metrics = open(run.out / "metrics.jsonl", "a") if run.main else None
    try:
        with _Interrupts() as interrupts:
            for step in range(start, args.steps):
                loss, grad_norm, aux = _update(run, corpus.train, step)
                summary["losses"].append(loss)
                _log(run, corpus, step + 1, loss, grad_norm, summary, metrics, progress, aux)
                if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
                    with interrupts.deferred():
                        _save(run, step + 1, metrics)
                    saved = step + 1
                if step + 1 < args.steps and _stop_requested(run, interrupts.requested):
                    with interrupts.deferred():
                        if saved != step + 1:
                            _save(run, step + 1, metrics)
                    raise _Stopped(step + 1)
    except _Stopped as stop:
        progress.close()
        if run.main:
            print(f"interrupted: saved {_latest_name(run.out)} (the state after step {stop.step}); "
                  f"continue with --resume", file=sys.stderr)
        raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        progress.close()
        if run.main:
            print(f"interrupted during step {step + 1}: nothing saved from it; the last checkpoint is "
                  f"{_latest_name(run.out)}; continue with --resume", file=sys.stderr)
        raise
    finally:
        progress.close()
        if metrics:
            metrics.close()
    return summary


def _log(run: _Run, corpus, step: int, loss: float, grad_norm: float, summary: dict, metrics, progress,
         aux: float | None = None) -> None:
    """The metrics row of update ``step`` (with a validation loss every ``eval_every``), and the progress line."""
    args = run.args
    row = {"step": step, "train_bpb": loss / LN2, "lr": run.scheduler.get_last_lr()[0], "grad_norm": grad_norm}
    if aux is not None:
        row["aux_loss"] = aux                 # mixture-of-memories balance loss (k when balanced)
    if step % args.eval_every == 0 or step == args.steps:
        row["val_bpb"] = summary["val_bpb"] = evaluate(run.model, corpus.val, args, run.device, run.autocast, run)
    if run.main:
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        tokens = args.batch_size * args.seq_len * args.grad_accum * run.replicas
        shown = {"loss": row["train_bpb"]} | ({"val": row["val_bpb"]} if "val_bpb" in row else {})
        progress.update(step - 1, tokens, **shown)


class _Stopped(Exception):
    """Ctrl-C was honoured after ``step`` updates and that state is saved."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step
