"""Results of ``linscan.eval.run`` as a printed table, results.json and accuracy.png."""

from __future__ import annotations

import json
from pathlib import Path


def _bucket_label(lengths, train: bool) -> str:
    lo, hi = lengths
    return f"{lo}-{hi}" + ("*" if train else "")


def format_table(results: dict, key: str = "acc") -> str:
    """Rows mixers, columns length buckets (``*``: the training range); ``key`` "acc" or "seq_acc".

    A cell is the mean over seeds, followed by [min-max] when there are several seeds. A mixer
    whose every seed diverged reads "diverged at step N" instead; seeds that diverged are left out
    of the means and named after the row.
    """
    seeds = results["config"]["seeds"]
    labels = [_bucket_label(b, i == 0) for i, b in enumerate(results["buckets"])]
    what = "accuracy on scored positions" if key == "acc" else "fraction of fully correct sequences"
    width = 17 if seeds > 1 else 8
    name_width = max([5] + [len(n) for n in results["mixers"]])
    lines = [f"{results['task']}: {what}, mean over {seeds} seed(s){' [min-max]' if seeds > 1 else ''}; "
             f"* = training lengths",
             f"{'mixer':<{name_width}}  " + " ".join(f"{lab:>{width}}" for lab in labels)
             + f" {'loss':>7} {'train s':>8}"]
    for name, entry in results["mixers"].items():
        lines.append(f"{name:<{name_width}}  " + _row(entry, key, seeds, width))
    return "\n".join(lines)


def _row(entry: dict, key: str, seeds: int, width: int) -> str:
    """One mixer's cells, mean loss and training seconds over the seeds that finished."""
    s, diverged = entry["summary"], entry.get("diverged")
    if s is None:
        return diverged
    cells = []
    for mean, lo, hi in zip(s[f"{key}_mean"], s[f"{key}_min"], s[f"{key}_max"]):
        cells.append(f"{mean:.3f} [{lo:.2f}-{hi:.2f}]" if seeds > 1 else f"{mean:.3f}")
    done = [r for r in entry["runs"] if r.get("diverged_at") is None]
    loss = sum(r["final_loss"] for r in done) / len(done)
    seconds = sum(r["train_seconds"] for r in done) / len(done)
    row = " ".join(f"{c:>{width}}" for c in cells) + f" {loss:>7.4f} {seconds:>8.0f}"
    return row + (f"  ({diverged})" if diverged else "")


def plot_accuracy(results: dict, path: str | Path) -> bool:
    """Accuracy against bucket midpoint, one line per mixer (min-max over seeds shaded),
    training lengths shaded grey; False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    mids = [(lo + hi) / 2 for lo, hi in results["buckets"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lo, hi = results["config"]["train_lengths"]
    ax.axvspan(lo, hi, color="grey", alpha=0.2, label="training lengths")
    order = sorted(range(len(mids)), key=mids.__getitem__)
    for name, entry in results["mixers"].items():
        s = entry["summary"]
        if s is None:                                            # every seed diverged: nothing to draw
            continue
        xs = [mids[i] for i in order]
        line, = ax.plot(xs, [s["acc_mean"][i] for i in order], "o-", label=name)
        if len(entry["runs"]) > 1:
            ax.fill_between(xs, [s["acc_min"][i] for i in order], [s["acc_max"][i] for i in order],
                            color=line.get_color(), alpha=0.15)
    ax.set_xlabel("sequence length (bucket midpoint)")
    ax.set_ylabel("accuracy (scored positions)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{results['task']}: length generalisation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_outputs(results: dict, out: str | Path) -> None:
    """``out/results.json`` and ``out/accuracy.png`` (the folder is created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out / "results.json")
    plot_accuracy(results, out / "accuracy.png")
