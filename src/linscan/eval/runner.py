"""Train a small model per mixer on a synthetic task, then measure accuracy per length bucket.

    from linscan.eval import run
    results = run("parity", ["deltanet", "deltanet_neg"], steps=1000, seeds=2, out="eval_runs/parity")

Training (one model per mixer and seed): AdamW, linear warmup then cosine decay,
gradient clipping; every step a fresh batch ``task.sample(batch, train_lengths,
seed=train_seed(seed, step))``; the loss is the cross entropy of the logits
against the task's ALIGNED labels (position t predicts labels[:, t], no shift),
-100 ignored. Evaluation: accuracy on the scored positions of a fixed set of
sequences per length bucket (the same for every mixer and seed), and the
fraction of sequences whose every scored position is right. A run whose loss
turns non-finite stops there and is reported as diverged; the comparison goes on.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models import LinscanConfig, LinscanForCausalLM
from ..train.optim import make_optimizer, make_scheduler
from .mixers import MixerSpec, parse_mixer
from .presets import EvalPreset, buckets, get_preset

THREADS = 2
MAX_VOCAB = 2**20          # an embedding table beyond this is a typo in a task option, not an experiment
EVAL_SEED = 2**40          # training seeds stay below it: evaluation never sees a training batch
EVAL_TOKENS = 16384        # tokens per evaluation forward (memory bound)


def train_seed(seed: int, step: int) -> int:
    """The data seed of training step ``step`` of run ``seed`` (distinct for every pair)."""
    return seed * 10_000_019 + step


def build_model(spec: MixerSpec, preset: EvalPreset, vocab_size: int, seed: int) -> LinscanForCausalLM:
    """The preset's model with ``spec``'s layer pattern; weights drawn from ``seed``."""
    config = LinscanConfig(vocab_size=vocab_size, d_model=preset.d_model, n_layers=spec.n_layers(preset.n_layers),
                           pattern=spec.pattern, n_heads=preset.n_heads, head_dim=preset.head_dim,
                           mlp_ratio=preset.mlp_ratio,
                           mixer_options=spec.mixer_options)
    torch.manual_seed(seed)
    return LinscanForCausalLM(config)


def _check_builds(spec: MixerSpec, preset: EvalPreset, vocab_size: int) -> None:
    """Build ``spec``'s model once (milliseconds at these sizes): a width its mixers refuse fails here,
    before any training, rather than when its turn comes."""
    if preset.head_dim is None and preset.d_model % preset.n_heads:
        raise ValueError(f"d_model: expected a multiple of n_heads = {preset.n_heads}, got {preset.d_model}")
    try:
        build_model(spec, preset, vocab_size, seed=0)
    except ValueError as e:
        raise ValueError(f"d_model: expected a width that {spec.name} accepts ({preset.n_heads} heads of "
                         f"{preset.head_dim or preset.d_model // preset.n_heads}), got {preset.d_model}: {e}") from e


def scored_logits(model: LinscanForCausalLM, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``model(input_ids).logits[mask]`` ([n_scored, vocab]) without the head on unscored positions.

    input_ids, mask: [B, T]. The head is most of the work when the vocabulary is
    large (MQAR: 8192) and few positions are scored; the stack is the model's own.
    """
    x = model.embed_tokens(input_ids)                            # (B, T, D)
    for block in model.blocks:
        x, _ = block(x)
    return model.head(model.norm(x[mask]))                       # (n_scored, vocab)


def _progress(label: str, step: int, total: int, loss: float, acc: float, t0: float, stream) -> None:
    every = max(1, total // 10)
    if stream is not None and ((step + 1) % every == 0 or step + 1 == total):
        print(f"  {label}: step {step + 1}/{total} loss {loss:.4f} train acc {acc:.3f} "
              f"{time.perf_counter() - t0:.0f}s", file=stream, flush=True)


def train_one(task, spec: MixerSpec, preset: EvalPreset, train_lengths: tuple[int, int], seed: int,
              *, stream=None) -> tuple[LinscanForCausalLM, dict]:
    """Train one model; returns it (in eval mode) and {final_loss, final_train_acc, seconds, losses, diverged_at}.

    final_loss / final_train_acc: means over the last 5% of steps. stream: progress lines, or None.
    diverged_at: None, or the step (1-based) whose loss was not finite; training stops there
    (before that step's update), and final_loss / final_train_acc are None.
    """
    model = build_model(spec, preset, task.vocab_size, seed)
    optimizer = make_optimizer(model, lr=preset.lr, weight_decay=preset.weight_decay)
    scheduler = make_scheduler(optimizer, warmup=min(preset.warmup, preset.steps), total=preset.steps)
    losses, accs, t0 = [], [], time.perf_counter()
    model.train()
    for step in range(preset.steps):
        input_ids, labels = task.sample(preset.batch_size, lengths=train_lengths, seed=train_seed(seed, step))
        mask = labels != -100                                    # (B, T)
        logits = scored_logits(model, input_ids, mask)           # (n_scored, vocab)
        target = labels[mask]
        loss = F.cross_entropy(logits.float(), target)
        balance = model.balance_loss()                           # mixture of memories: keep the router balanced
        if balance is not None:
            loss = loss + model.config.aux_loss_coef * balance
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            if stream is not None:
                print(f"  {spec.name} seed {seed}: diverged at step {step + 1} (loss {losses[-1]})", file=stream)
            return model.eval(), {"final_loss": None, "final_train_acc": None, "seconds": time.perf_counter() - t0,
                                  "losses": losses, "diverged_at": step + 1}
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        accs.append((logits.argmax(-1) == target).float().mean().item())
        _progress(f"{spec.name} seed {seed}", step, preset.steps, losses[-1], accs[-1], t0, stream)
    tail = max(1, preset.steps // 20)                             # the last 5% of steps: less noisy
    summary = {"final_loss": sum(losses[-tail:]) / tail, "final_train_acc": sum(accs[-tail:]) / tail,
               "seconds": time.perf_counter() - t0, "losses": losses, "diverged_at": None}
    return model.eval(), summary


@torch.no_grad()
def evaluate(model: LinscanForCausalLM, task, bucket_list: list[tuple[int, int]], n: int) -> list[dict]:
    """Per bucket (lo, hi): {lengths, acc (scored positions), seq_acc (all scored right), n}."""
    results = []
    for i, lengths in enumerate(bucket_list):
        input_ids, labels = task.sample(n, lengths=tuple(lengths), seed=EVAL_SEED + i)
        rows = max(1, EVAL_TOKENS // input_ids.shape[1])
        correct = scored = 0
        seq_ok = []
        for start in range(0, n, rows):
            x, y = input_ids[start:start + rows], labels[start:start + rows]
            mask = y != -100                                     # (b, T)
            hit = torch.zeros_like(mask)
            hit[mask] = scored_logits(model, x, mask).argmax(-1) == y[mask]
            correct += int(hit.sum())
            scored += int(mask.sum())
            seq_ok.append((hit | ~mask).all(dim=1))
        results.append({"lengths": list(lengths), "acc": correct / max(1, scored),
                        "seq_acc": torch.cat(seq_ok).float().mean().item(), "n": n})
    return results


def _resolve_task(task, task_options: dict | None):
    if isinstance(task, str):
        from ..data.tasks import TASKS, make_task
        if task not in TASKS:
            raise ValueError(f"task: expected one of {', '.join(sorted(TASKS))}, got {task!r}")
        try:
            task = make_task(task, **(task_options or {}))
        except ValueError as e:
            raise ValueError(f"task_options: {str(e).removeprefix('make_task: ')}") from e
    elif task_options:
        raise ValueError(f"task_options: only with a task name, got a {type(task).__name__} and {task_options}")
    if task.vocab_size > MAX_VOCAB:
        raise ValueError(f"task_options: expected a task vocabulary of at most {MAX_VOCAB} tokens (the models here "
                         f"are small), got {task.vocab_size} from {task_options}")
    return task


def _lengths(name: str, value, default, task) -> tuple[int, int]:
    """The range ``value`` (None: ``default``), checked against what ``task`` can sample."""
    lo, hi = (default if value is None else value)
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ValueError(f"{name}: expected a range (lo, hi) with 1 <= lo <= hi, got {value!r}")
    try:
        task.sample(1, lengths=(lo, hi), seed=0)      # the task's own limits (shortest, longest sequence)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e
    return lo, hi


def _summarise(runs: list[dict]) -> dict | None:
    """Mean, min and max over the seeds that finished of every bucket's acc and seq_acc; None when
    every seed diverged."""
    done = [r for r in runs if r["buckets"] is not None]
    if not done:
        return None
    out = {}
    for key in ("acc", "seq_acc"):
        per_bucket = list(zip(*[[b[key] for b in r["buckets"]] for r in done]))   # (bucket, seed)
        out[f"{key}_mean"] = [sum(v) / len(v) for v in per_bucket]
        out[f"{key}_min"] = [min(v) for v in per_bucket]
        out[f"{key}_max"] = [max(v) for v in per_bucket]
    return out


def _diverged(runs: list[dict]) -> str | None:
    """"diverged at step N" (one seed) or "seed S diverged at step N; ..." (several); None if none did."""
    bad = [r for r in runs if r["diverged_at"] is not None]
    if not bad:
        return None
    if len(runs) == 1:
        return f"diverged at step {bad[0]['diverged_at']}"
    return "; ".join(f"seed {r['seed']} diverged at step {r['diverged_at']}" for r in bad)


def _record(model, task, bucket_list, preset: EvalPreset, seed: int, summary: dict) -> dict:
    """One run's entry in the results; a diverged run is not evaluated (its buckets are None)."""
    record = {"seed": seed, "steps": preset.steps, "diverged_at": summary["diverged_at"],
              "final_loss": summary["final_loss"], "final_train_acc": summary["final_train_acc"],
              "train_seconds": summary["seconds"]}
    if summary["diverged_at"] is not None:
        return record | {"buckets": None, "eval_seconds": 0.0}
    t_eval = time.perf_counter()
    buckets_ = evaluate(model, task, bucket_list, preset.eval_sequences)
    return record | {"buckets": buckets_, "eval_seconds": time.perf_counter() - t_eval}


def _check_out(out) -> None:
    """Create ``out`` now, so that a file in its way fails before any training, not after the first mixer."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"out: expected a folder that can be created, got {str(out)!r} ({e.strerror})") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"out: expected a writable folder, got {str(out)!r}")


def _prepare(task, mixers, *, train_lengths, test_lengths, seeds, task_options, out, preset_overrides):
    """Every argument of :func:`run` checked before any training (ValueError naming it); returns
    (task, preset, specs, train range, test range, task options as used)."""
    preset = get_preset(task if isinstance(task, str) else task.name, **preset_overrides)
    if not math.isfinite(preset.lr):
        raise ValueError(f"lr: expected a finite number > 0, got {preset.lr!r}")
    if isinstance(task, str):
        task_options = {**preset.task_options, **(task_options or {})}
    task = _resolve_task(task, task_options)
    mixers = preset.mixers if mixers is None else mixers
    if not mixers:
        raise ValueError(f"mixers: expected at least one mixer name (the {task.name!r} preset names none)")
    specs = [m if isinstance(m, MixerSpec) else parse_mixer(m) for m in mixers]
    for spec in specs:
        _check_builds(spec, preset, task.vocab_size)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds: expected a positive integer, got {seeds!r}")
    train_range = _lengths("train_lengths", train_lengths, preset.train_lengths or task.train_lengths, task)
    test_range = _lengths("test_lengths", test_lengths, preset.test_lengths or task.test_lengths, task)
    if out is not None:
        _check_out(out)
    return task, preset, specs, train_range, test_range, dict(task_options or {})


def run(task, mixers=None, *, train_lengths=None, test_lengths=None, seeds: int = 1, task_options: dict | None = None,
        out=None, progress: bool = True, **preset_overrides) -> dict:
    """Train and evaluate every mixer of ``mixers`` on ``task``; returns the results as plain data.

    task: a task name (``linscan.data.tasks.TASKS``, built with ``task_options``) or a Task object.
    mixers: names (``linscan.eval.mixers``) or MixerSpecs; None: the preset's comparison.
    train_lengths / test_lengths: (lo, hi) inclusive, default the preset's, else the task's.
    task_options: on top of the preset's. seeds: runs 0..seeds-1 per mixer. preset_overrides: fields of
    ``EvalPreset`` (steps, batch_size, lr, d_model, ...; None = the task preset's).
    out: folder for results.json and accuracy.png (created first, written after every mixer), or None.
    progress: a line on stderr every ~10% of each training run.
    Every argument is checked before the first training step: ValueError naming it.
    A run whose loss is not finite stops there and is reported, not raised: its "diverged_at" is
    the step, its buckets None; the mixer's "diverged" says "diverged at step N" (its summary
    covers the seeds that finished, None when none did) and the other mixers go on.
    Returns {"task", "task_options", "config", "buckets", "mixers": {name: {..., "diverged", "runs",
    "summary"}}, "wall_seconds"}; every accuracy list follows "buckets" (the training range first).
    """
    from .report import write_outputs

    torch.set_num_threads(THREADS)
    task, preset, specs, train_range, test_range, task_options = _prepare(
        task, mixers, train_lengths=train_lengths, test_lengths=test_lengths, seeds=seeds,
        task_options=task_options, out=out, preset_overrides=preset_overrides)
    bucket_list = buckets(train_range, test_range, preset.n_buckets)
    results = {"task": task.name, "task_options": task_options,  # as used (with the preset's)
               "config": {**dataclasses.asdict(preset), "train_lengths": list(train_range), "test_lengths": list(test_range),
                          "seeds": seeds, "threads": THREADS, "vocab_size": task.vocab_size},
               "buckets": [list(b) for b in bucket_list], "mixers": {}}
    t0 = time.perf_counter()
    for spec in specs:
        runs = []
        for seed in range(seeds):
            model, summary = train_one(task, spec, preset, train_range, seed,
                                       stream=sys.stderr if progress else None)
            runs.append(_record(model, task, bucket_list, preset, seed, summary))
        results["mixers"][spec.name] = {
            "pattern": spec.pattern, "mixer_options": spec.mixer_options, "n_layers": model.config.n_layers,
            "parameters": model.num_parameters(), "diverged": _diverged(runs), "runs": runs,
            "summary": _summarise(runs)}
        results["wall_seconds"] = time.perf_counter() - t0
        if out is not None:
            write_outputs(results, out)
    results["wall_seconds"] = time.perf_counter() - t0
    if out is not None:
        write_outputs(results, out)
    return results
