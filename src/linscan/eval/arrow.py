"""``linscan eval arrow``: arrow pointing, trained at one image size and tested at a larger one.

The pLSTM paper's extrapolation test (MATH.md 8.3): classifiers are trained on W x W images
and tested on W x W and on 2W x 2W images whose objects keep their size in pixels (only the
canvas, and so the patch grid, grows; the position table is resized). Per mixer:

1. the training set: ``train_images`` images at ``train_size`` (seed 0), the test sets:
   ``test_images`` at each size (seeds 1 and 2);
2. AdamW (weight decay 0.05), linear warm-up over 5% of the steps then cosine decay, gradient
   clipping at 1.0, cross-entropy, batches drawn from the training set in shuffled epochs;
3. accuracy at both sizes.

Output: a table, ``OUT/results.json``, ``OUT/accuracy.png`` and example images
``OUT/examples_<W>.png`` of both sizes with their labels.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from ..data.tasks.arrow import ArrowPointing
from ..models.vision import MIXERS, VisionClassifier, VisionConfig
from .runner import _check_out

OPTIONS = {"mixers": "--mixers", "train_size": "--train-size", "test_size": "--test-size",
           "patch_size": "--patch", "train_images": "--train-images", "test_images": "--test-images",
           "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "d_model": "--d-model",
           "n_layers": "--layers", "n_heads": "--heads", "seeds": "--seeds", "threads": "--threads",
           "device": "--device", "out": "--out"}
DEFAULT_MIXERS = ("plstm", "plstm_d", "lightnet", "attention")


def run_arrow(mixers=DEFAULT_MIXERS, *, train_size: int = 96, test_size: int | None = None, patch_size: int = 8,
              train_images: int = 16384, test_images: int = 512, steps: int = 600, batch_size: int = 32,
              lr: float = 1e-3, d_model: int = 64, n_layers: int = 4, n_heads: int = 4, seeds: int = 1,
              threads: int = 2, device: str = "auto", out: str | None = None, log=None) -> dict:
    """Train every mixer (``linscan.models.vision.MIXERS``) ``seeds`` times; module docstring.

    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; images stay on the CPU and
    move per batch.
    Returns ``{"config": ..., "mixers": {name: {"runs": [{"seed", "acc": {size: accuracy}, "loss",
    "train_s"}], "acc": {size: mean}, "params"}}}``; sizes are the image sides (str keys in JSON).
    """
    log = sys.stderr if log is None else log
    test_size = 2 * train_size if test_size is None else test_size
    config = dict(mixers=list(mixers), train_size=train_size, test_size=test_size, patch_size=patch_size,
                  train_images=train_images, test_images=test_images, steps=steps, batch_size=batch_size,
                  lr=lr, d_model=d_model, n_layers=n_layers, n_heads=n_heads, seeds=seeds, threads=threads)
    _check(config)
    try:
        device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                              "cpu" if device == "auto" else device)
    except RuntimeError as e:
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}") from e
    config["device"] = str(device)
    if out:
        _check_out(out)                                     # a file in the way fails before training
    torch.set_num_threads(threads)
    train_task = ArrowPointing(train_size)
    sizes = [train_size, test_size]
    t0 = time.perf_counter()
    print(f"arrow: drawing {train_images} training images at {train_size} px", file=log, flush=True)
    data = {"train": train_task.sample(train_images, seed=0)}
    for i, size in enumerate(sizes):
        data[size] = train_task.with_canvas(size).sample(test_images, seed=1 + i)
    results = {"task": "arrow", "config": config, "mixers": {}}
    for name in mixers:
        runs = []
        for seed in range(seeds):
            vision = VisionConfig(image_size=train_size, patch_size=patch_size, d_model=d_model,
                                  n_layers=n_layers, n_heads=n_heads, mixer=name)
            runs.append(_train_and_test(vision, data, sizes, seed=seed, steps=steps, batch_size=batch_size,
                                        lr=lr, log=log, device=device))
        results["mixers"][name] = {"runs": runs, "params": runs[0]["params"],
                                   "acc": {s: sum(r["acc"][s] for r in runs) / len(runs) for s in sizes}}
    results["wall_seconds"] = time.perf_counter() - t0
    if out:
        write_outputs(results, out, train_task, sizes)
    return results


def _check(config: dict) -> None:
    unknown = [m for m in config["mixers"] if m not in MIXERS]
    if not config["mixers"] or unknown:
        raise ValueError(f"mixers: expected names from {', '.join(MIXERS)}, got {config['mixers']!r}")
    for name in ("train_size", "test_size"):
        if config[name] % config["patch_size"]:
            raise ValueError(f"{name}: expected a multiple of the patch size {config['patch_size']}, got {config[name]}")
    if config["test_size"] < config["train_size"]:
        raise ValueError(f"test_size: expected >= train_size = {config['train_size']}, got {config['test_size']}")
    ArrowPointing(config["train_size"])                        # the canvas must hold the objects


def _train_and_test(vision: VisionConfig, data: dict, sizes: list[int], *, seed: int, steps: int,
                    batch_size: int, lr: float, log, device=torch.device("cpu")) -> dict:
    """One model: train on data["train"], accuracy on data[size] for every size."""
    torch.manual_seed(seed)
    model = VisionClassifier(vision).to(device)
    images, labels = data["train"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    gen = torch.Generator().manual_seed(seed)
    order, position, t0, recent = torch.randperm(len(labels), generator=gen), 0, time.perf_counter(), []
    for step in range(steps):
        if position + batch_size > len(order):                 # a new shuffled epoch
            order, position = torch.randperm(len(labels), generator=gen), 0
        batch = order[position:position + batch_size]
        position += batch_size
        x, y = images[batch].to(device), labels[batch].to(device)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        recent = (recent + [(loss.item(), (logits.argmax(-1) == y).float().mean().item())])[-50:]
        if (step + 1) % 50 == 0 or step + 1 == steps:
            mean_loss, mean_acc = (sum(x) / len(recent) for x in zip(*recent))
            print(f"arrow {vision.mixer} seed {seed}: step {step + 1}/{steps} loss {mean_loss:.3f} "
                  f"train acc {mean_acc:.3f} ({time.perf_counter() - t0:.0f} s)", file=log, flush=True)
    train_s = time.perf_counter() - t0
    acc = {size: accuracy(model, *data[size], batch_size=64) for size in sizes}
    print(f"arrow {vision.mixer} seed {seed}: " + ", ".join(f"{s} px {a:.3f}" for s, a in acc.items()),
          file=log, flush=True)
    return {"seed": seed, "acc": acc, "loss": sum(x for x, _ in recent) / len(recent), "train_s": train_s,
            "params": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int) -> float:
    """Fraction of ``images [N, 3, W, W]`` classified as ``labels [N]``."""
    model.eval()
    device = next(model.parameters()).device
    correct = sum((model(x.to(device)).argmax(-1).cpu() == y).sum().item()
                  for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    model.train()
    return correct / len(labels)


def format_table(results: dict) -> str:
    """Rows mixers, columns the accuracy at each size (mean over seeds), parameters, training s."""
    sizes = [results["config"]["train_size"], results["config"]["test_size"]]
    c = results["config"]
    lines = [f"arrow pointing: accuracy; trained at {sizes[0]} px ({c['steps']} steps x {c['batch_size']}, "
             f"{c['train_images']} images), tested at {sizes[0]} and {sizes[1]} px; mean over {c['seeds']} seed(s)",
             f"{'mixer':<15} " + " ".join(f"{str(s) + ' px':>8}" for s in sizes) + f" {'params':>9} {'train s':>8}"]
    for name, entry in results["mixers"].items():
        train_s = sum(r["train_s"] for r in entry["runs"]) / len(entry["runs"])
        lines.append(f"{name:<15} " + " ".join(f"{entry['acc'][s]:>8.3f}" for s in sizes)
                     + f" {entry['params']:>9,} {train_s:>8.0f}")
    return "\n".join(lines)


def write_outputs(results: dict, out: str, task: ArrowPointing, sizes: list[int]) -> None:
    """results.json, accuracy.png (grouped bars) and example images of both sizes under ``out``."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results, indent=2))
    for size in sizes:
        task.with_canvas(size).save_examples(path / f"examples_{size}.png", n=8, seed=3)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["mixers"])
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.5))
    for i, size in enumerate(sizes):
        accs = [results["mixers"][n]["acc"][size] for n in names]
        ax.bar([j + 0.38 * (i - 0.5) for j in range(len(names))], accs, width=0.38,
               label=f"{size} px" + (" (train)" if i == 0 else ""))
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("arrow pointing: train size vs twice the size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path / "accuracy.png", dpi=120)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``linscan eval arrow``."""
    from ..cli import positive_float, positive_int

    p.add_argument("--mixers", default=",".join(DEFAULT_MIXERS),
                   help=f"comma-separated, from {', '.join(MIXERS)} (default %(default)s)")
    p.add_argument("--train-size", type=positive_int, default=96, help="training image side in px (default 96)")
    p.add_argument("--test-size", type=positive_int, default=None, help="test image side (default 2x train)")
    p.add_argument("--patch", type=positive_int, default=8, help="patch side in px (default 8)")
    p.add_argument("--train-images", type=positive_int, default=16384, help="training set size (default 16384)")
    p.add_argument("--test-images", type=positive_int, default=512, help="test images per size (default 512)")
    p.add_argument("--steps", type=positive_int, default=600)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--d-model", type=positive_int, default=64)
    p.add_argument("--layers", type=positive_int, default=4)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--seeds", type=positive_int, default=1)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write DIR/results.json, accuracy.png and examples_<size>.png")


def run(args) -> int:
    """``linscan eval arrow``: the table, and files under --out."""
    from ..cli import option_error

    try:
        results = run_arrow(tuple(m.strip() for m in args.mixers.split(",") if m.strip()),
                            train_size=args.train_size, test_size=args.test_size, patch_size=args.patch,
                            train_images=args.train_images, test_images=args.test_images, steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, d_model=args.d_model, n_layers=args.layers,
                            n_heads=args.heads, seeds=args.seeds, threads=args.threads, device=args.device,
                            out=args.out)
    except ValueError as e:
        raise option_error(e, OPTIONS) from e
    print(format_table(results))
    print(f"\nwall time {results['wall_seconds']:.0f} s" + (f"; wrote {args.out}/results.json, accuracy.png, "
                                                            "examples_*.png" if args.out else ""))
    return 0
