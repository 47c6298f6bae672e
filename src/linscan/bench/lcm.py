"""``linscan bench lcm``: the second minimum of a multiset, LCM against sum / mean / max / GRU aggregation.

MATH.md 10.1 (after pyg-team/pytorch_geometric examples/lcm_aggr_2nd_min.py, secondary):

1. Data: multisets of ``bits``-bit integers (uniform, with repetition), each element given as
   its bits (MSB first, 0/1 features); the label is the second smallest element (with
   multiplicity: sorted(set)[1]) as bits. ``n_train`` training sets of sizes ``train_sizes``
   (2..16), fixed once and reshuffled every epoch; ``test_sets`` fresh sets at every test size
   (32, 64, 128: longer than any set seen in training) and at the training sizes.
2. Model: encoder MLP (bits -> width -> width) -> aggregator -> MLP (width -> width -> bits
   logits); BCE on the bits, Adam; metric: exact match of all bits. Aggregators: ``lcm``
   (:class:`linscan.nn.lcm.LCM`, carry mode), ``sum``, ``mean``, ``max``, ``gru``.
3. Time per batch (forward + backward of the aggregator alone, ``time_batch`` sets of n
   elements, width ``width``) for ``lcm`` (ceil(log2 n) combine calls) against ``gru`` (n
   sequential steps) at the ``time_sizes``.

Scaled down from the paper's setting (width 128, 65,536 sets, batch 128, Adam 1e-4, 1000
epochs = 512k steps) to fit ~15 CPU minutes on one thread: width 64, ``steps`` updates (default
10,000, ~20 epochs), lr 3e-3 decayed to 0 along a half cosine (1e-4 is far too slow for 10k
steps: at 3,000 steps LCM reached 41% at size 32 with a constant 1e-3, 76% with 3e-3). The
paper's example reports ~95% exact match for LCM at size 32 and failures of sum and max.

    python -m linscan.bench.lcm --out /tmp/lcm_runs/default
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

AGGREGATOR_NAMES = ("lcm", "sum", "mean", "max", "gru")
TIMED = ("lcm", "gru")
REPEATS = 3


def log(text: str) -> None:
    print(f"bench lcm: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data


def sample_sets(n_sets: int, sizes: tuple[int, int], bits: int, generator):
    """``n_sets`` multisets with sizes uniform in ``[lo, hi]``.

    Returns values ``[n_sets, hi]`` (long; padding past each size), sizes ``[n_sets]`` and
    labels ``[n_sets]`` (the second smallest element of each set).
    """
    import torch

    lo, hi = sizes
    values = torch.randint(2**bits, (n_sets, hi), generator=generator)
    size = torch.randint(lo, hi + 1, (n_sets,), generator=generator)
    valid = torch.arange(hi) < size[:, None]                      # (n_sets, hi)
    labels = values.masked_fill(~valid, 2**bits).sort(dim=1).values[:, 1]
    return values, size, labels


def to_bits(values, bits: int):
    """Integers ``[...]`` -> their bits ``[..., bits]`` as float 0/1, most significant first."""
    import torch

    shifts = torch.arange(bits - 1, -1, -1, device=values.device)
    return ((values[..., None] >> shifts) & 1).float()


def flatten(values, size):
    """Padded sets ``[S, hi]``, sizes ``[S]`` -> elements ``[n_total]`` and their set ids ``[n_total]``."""
    import torch

    valid = torch.arange(values.shape[1]) < size[:, None]
    return values[valid], valid.nonzero()[:, 0]


# ---------------------------------------------------------------- model


def make_model(name: str, width: int, bits: int):
    """encoder MLP -> aggregator ``name`` -> 2-layer MLP to ``bits`` logits."""
    from torch import nn

    from ..nn.lcm import AGGREGATORS

    class SetModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(bits, width), nn.ReLU(), nn.Linear(width, width))
            self.aggregator = AGGREGATORS[name](width)
            self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, bits))

        def forward(self, values, index, n_sets: int):
            """values ``[n_total]`` (long), index ``[n_total]`` -> logits ``[n_sets, bits]``."""
            return self.head(self.aggregator(self.encoder(to_bits(values, bits)), index, n_sets))

    return SetModel()


def train(name: str, train_data, *, width: int, bits: int, steps: int, batch_size: int, lr: float,
          seed: int, cosine: bool = True, progress: bool = True):
    """Adam on BCE over the bits for ``steps`` minibatches of ``train_data`` (values, sizes, labels).

    ``cosine``: the learning rate decays from ``lr`` to 0 along a half cosine (else constant).

    Returns the model and a summary (final loss: mean of the last 50 steps, seconds).
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = make_model(name, width, bits)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    values, size, labels = train_data
    order, cursor, losses, t0 = torch.randperm(len(size)), 0, [], time.perf_counter()
    for step in range(steps):
        # 1. the next minibatch of a shuffled epoch
        if cursor + batch_size > len(size):
            order, cursor = torch.randperm(len(size)), 0
        ids = order[cursor : cursor + batch_size]
        cursor += batch_size
        x, index = flatten(values[ids], size[ids])
        # 2. one update
        loss = F.binary_cross_entropy_with_logits(model(x, index, len(ids)), to_bits(labels[ids], bits))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
        if progress and (step + 1) % max(1, steps // 10) == 0:
            log(f"{name}: step {step + 1}/{steps}, loss {sum(losses[-50:]) / len(losses[-50:]):.4f}, "
                f"{time.perf_counter() - t0:.0f} s")
    return model, {"final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])), "train_s": time.perf_counter() - t0}


def exact_match(model, data, bits: int, chunk: int = 256) -> float:
    """Share of sets whose predicted bits all equal the label's."""
    import torch

    values, size, labels = data
    hits = 0
    with torch.no_grad():
        for s in range(0, len(size), chunk):
            x, index = flatten(values[s : s + chunk], size[s : s + chunk])
            pred = model(x, index, len(size[s : s + chunk])) > 0
            hits += int((pred == to_bits(labels[s : s + chunk], bits).bool()).all(-1).sum())
    return hits / len(size)


def majority_share(data) -> float:
    """Accuracy of always answering the most frequent label (the chance line)."""
    import torch

    return float(torch.bincount(data[2]).max()) / len(data[2])


# ---------------------------------------------------------------- timing


def time_aggregator(name: str, n: int, *, width: int, batch: int, seed: int = 0) -> float:
    """Median seconds of forward + backward of aggregator ``name`` on ``batch`` sets of n elements."""
    import torch

    from ..nn.lcm import AGGREGATORS

    torch.manual_seed(seed)
    agg = AGGREGATORS[name](width)
    x = torch.randn(batch * n, width, requires_grad=True)
    index = torch.arange(batch).repeat_interleave(n)
    times = []
    for _ in range(REPEATS + 1):                                  # the first is a warm-up
        t0 = time.perf_counter()
        agg(x, index, batch).square().mean().backward()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[REPEATS // 2]


def sequential_steps(name: str, n: int) -> int:
    """Dependent combine / cell calls for a set of n: tree depth for lcm, n for gru."""
    return math.ceil(math.log2(n)) if name == "lcm" else n


# ---------------------------------------------------------------- the run


def run(out: str = "runs/bench-lcm", *, aggregators: tuple[str, ...] = AGGREGATOR_NAMES, width: int = 64,
        steps: int = 10000, batch_size: int = 128, lr: float = 3e-3, n_train: int = 65536,
        train_sizes: tuple[int, int] = (2, 16), test_sizes: tuple[int, ...] = (32, 64, 128), test_sets: int = 512,
        time_sizes: tuple[int, ...] = (16, 64, 256, 1024), time_batch: int = 16, bits: int = 8, seed: int = 0,
        threads: int = 1, progress: bool = True) -> dict:
    """Train and test every aggregator, time lcm against gru; print a table; results.json and lcm.png in ``out``."""
    import torch

    _check_options(aggregators, train_sizes, test_sizes, bits,
                   {"width": width, "steps": steps, "batch_size": batch_size, "n_train": n_train,
                    "test_sets": test_sets, "time_batch": time_batch, "threads": threads})
    torch.set_num_threads(threads)
    # 1. one training set and one test set per size, shared by every aggregator
    g = torch.Generator().manual_seed(seed)
    train_data = sample_sets(n_train, train_sizes, bits, g)
    tests = {"train": sample_sets(test_sets, train_sizes, bits, g)}
    tests.update({str(n): sample_sets(test_sets, (n, n), bits, g) for n in test_sizes})
    results = {"config": {"width": width, "steps": steps, "batch_size": batch_size, "lr": lr, "n_train": n_train,
                          "train_sizes": list(train_sizes), "test_sets": test_sets, "bits": bits, "seed": seed,
                          "threads": threads, "time_batch": time_batch},
               "chance": {k: majority_share(d) for k, d in tests.items()}, "rows": [], "timing": []}
    # 2. train and test each aggregator
    for name in aggregators:
        model, info = train(name, train_data, width=width, bits=bits, steps=steps, batch_size=batch_size, lr=lr,
                            seed=seed, progress=progress)
        accuracy = {k: exact_match(model, d, bits) for k, d in tests.items()}
        results["rows"].append({"aggregator": name, **info, "accuracy": accuracy})
        if progress:
            log(f"{name}: " + ", ".join(f"{k} {v:.1%}" for k, v in accuracy.items()))
    # 3. time per batch against set size
    for n in time_sizes:
        for name in TIMED:
            t = time_aggregator(name, n, width=width, batch=time_batch, seed=seed)
            results["timing"].append({"aggregator": name, "n": n, "sequential_steps": sequential_steps(name, n),
                                      "time_s": t})
            if progress:
                log(f"time {name} n = {n}: {t * 1e3:.1f} ms")
    # 4. report
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, path / "lcm.png")
    print(format_table(results))
    return results


def _check_options(aggregators, train_sizes, test_sizes, bits: int, counts: dict[str, int]) -> None:
    """ValueError naming the first option out of range."""
    for key, value in counts.items():
        if value < 1:
            raise ValueError(f"{key}: expected a positive integer, got {value}")
    unknown = [a for a in aggregators if a not in AGGREGATOR_NAMES]
    if unknown or not aggregators:
        raise ValueError(f"aggregators: expected some of {AGGREGATOR_NAMES}, got {tuple(aggregators)}")
    if len(train_sizes) != 2 or not 2 <= train_sizes[0] <= train_sizes[1]:
        raise ValueError(f"train_sizes: expected (lo, hi) with 2 <= lo <= hi, got {tuple(train_sizes)}")
    if not test_sizes or min(test_sizes) < 2:
        raise ValueError(f"test_sizes: expected sizes >= 2 (a second minimum needs two), got {tuple(test_sizes)}")
    if not 1 <= bits <= 16:
        raise ValueError(f"bits: expected 1..16, got {bits}")


def format_table(results: dict) -> str:
    """Exact-match accuracy per aggregator and test size; time per batch against set size."""
    cfg, keys = results["config"], list(results["chance"])
    head = [f"train {cfg['train_sizes'][0]}-{cfg['train_sizes'][1]}" if k == "train" else f"n={k}" for k in keys]
    lines = [f"second minimum, {cfg['bits']}-bit, exact match ({cfg['test_sets']} sets per column; width "
             f"{cfg['width']}, {cfg['steps']} steps x {cfg['batch_size']}, Adam {cfg['lr']:g} cosine)",
             f"{'aggregator':<10} " + " ".join(f"{h:>11}" for h in head) + f" {'loss':>7} {'train s':>8}"]
    for r in results["rows"]:
        lines.append(f"{r['aggregator']:<10} " + " ".join(f"{r['accuracy'][k]:>11.1%}" for k in keys)
                     + f" {r['final_loss']:>7.4f} {r['train_s']:>8.0f}")
    lines.append(f"{'majority':<10} " + " ".join(f"{results['chance'][k]:>11.1%}" for k in keys))
    if results["timing"]:
        lines += ["", f"forward + backward of the aggregator, {cfg['time_batch']} sets x n elements, width "
                  f"{cfg['width']}, {cfg['threads']} thread(s)",
                  f"{'n':>6} {'aggregator':>10} {'seq. steps':>10} {'ms':>9}"]
        lines += [f"{t['n']:>6} {t['aggregator']:>10} {t['sequential_steps']:>10} {t['time_s'] * 1e3:>9.1f}"
                  for t in results["timing"]]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Accuracy against set size per aggregator; time per batch against set size (lcm, gru)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [int(k) for k in results["chance"] if k != "train"]
    for r in results["rows"]:
        ax_acc.plot(sizes, [r["accuracy"][str(n)] for n in sizes], marker="o", label=r["aggregator"])
    ax_acc.plot(sizes, [results["chance"][str(n)] for n in sizes], "k:", label="majority label")
    ax_acc.set(xscale="log", xlabel="test set size (trained on 2-16)", ylabel="exact match", ylim=(0, 1),
               title="second minimum")
    ax_acc.set_xticks(sizes, [str(n) for n in sizes])
    ax_acc.set_xticks([], minor=True)
    ax_acc.legend(fontsize="small")
    for name in TIMED:
        rows = [t for t in results["timing"] if t["aggregator"] == name]
        ax_time.plot([t["n"] for t in rows], [t["time_s"] * 1e3 for t in rows], marker="o",
                     label=f"{name} ({'log2 n levels' if name == 'lcm' else 'n steps'})")
    ax_time.set(xscale="log", yscale="log", xlabel="set size n", ylabel="ms per batch (fwd + bwd)",
                title="aggregator time")
    ax_time.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _int_pair(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(t) for t in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI (e.g. 2-16), got {text!r}") from None
    return lo, hi


def _int_list(text: str) -> tuple[int, ...]:
    if not text.strip():
        return ()
    try:
        values = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of :func:`run` (same names, dashes for underscores)."""
    p.add_argument("--out", default="runs/bench-lcm", metavar="DIR", help="results.json and lcm.png (default runs/bench-lcm)")
    p.add_argument("--aggregators", default=",".join(AGGREGATOR_NAMES),
                   help=f"comma-separated, of {','.join(AGGREGATOR_NAMES)} (default all)")
    p.add_argument("--width", type=int, default=64, help="model width (default 64; the paper: 128)")
    p.add_argument("--steps", type=int, default=10000, help="Adam updates per aggregator (default 10000)")
    p.add_argument("--batch-size", type=int, default=128, help="sets per update (default 128)")
    p.add_argument("--lr", type=float, default=3e-3,
                   help="peak Adam learning rate, cosine-decayed to 0 (default 3e-3; the paper: 1e-4, constant)")
    p.add_argument("--n-train", type=int, default=65536, help="training sets (default 65536)")
    p.add_argument("--train-sizes", type=_int_pair, default=(2, 16), help="training set sizes LO-HI (default 2-16)")
    p.add_argument("--test-sizes", type=_int_list, default=(32, 64, 128), help="test set sizes (default 32,64,128)")
    p.add_argument("--test-sets", type=int, default=512, help="test sets per size (default 512)")
    p.add_argument("--time-sizes", type=_int_list, default=(16, 64, 256, 1024),
                   help="set sizes for the lcm / gru timing (default 16,64,256,1024; empty: none)")
    p.add_argument("--time-batch", type=int, default=16, help="sets per timed batch (default 16)")
    p.add_argument("--bits", type=int, default=8, help="bits per integer (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def run_args(args: argparse.Namespace) -> dict:
    """:func:`run` with parsed options."""
    return run(args.out, aggregators=tuple(a.strip() for a in args.aggregators.split(",") if a.strip()),
               width=args.width, steps=args.steps, batch_size=args.batch_size, lr=args.lr, n_train=args.n_train,
               train_sizes=args.train_sizes, test_sizes=args.test_sizes, test_sets=args.test_sets,
               time_sizes=args.time_sizes, time_batch=args.time_batch, bits=args.bits, seed=args.seed,
               threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    """``python -m linscan.bench.lcm [options]``."""
    p = argparse.ArgumentParser(prog="python -m linscan.bench.lcm", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        run_args(args)
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
