"""Per-task training presets: a small model, a schedule, the lengths, the task's options and the
mixers to compare, sized so that ``linscan eval TASK`` alone shows the task's contrast in at most
15 minutes of 2 CPU cores.

Lengths default to the preset's, else the task's own ranges (``task.train_lengths``,
``task.test_lengths``); the test range is split into ``n_buckets`` buckets and
the training range is reported as one more bucket (in distribution).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalPreset:
    """Model size and training schedule for one task.

    n_layers: depth (rounded up to a multiple of a hybrid's pattern length); d_model, n_heads,
    head_dim (None: d_model // n_heads; sets every mixer's state size), mlp_ratio: as in ``LinscanConfig``. steps, batch_size, lr, warmup, weight_decay, clip: AdamW
    with linear warmup then cosine decay to lr / 10, gradient norm clipped at ``clip``.
    eval_sequences: sequences per test bucket; n_buckets: buckets of the test range.
    mixers: the comparison ``linscan eval TASK`` runs without ``--mixers``.
    train_lengths / test_lengths: (lo, hi) inclusive; None: the task's own.
    task_options: the task constructor's options (the task's defaults for the others).
    """

    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    head_dim: int | None = None
    mlp_ratio: float = 2.0
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    clip: float = 1.0
    eval_sequences: int = 512
    n_buckets: int = 4
    mixers: tuple[str, ...] = ()
    train_lengths: tuple[int, int] | None = None
    test_lengths: tuple[int, int] | None = None
    task_options: dict = field(default_factory=dict)


PRESETS: dict[str, EvalPreset] = {
    # Each sized for <= 15 minutes of 2 CPU cores for its default comparison (one seed); measured
    # tables in the README's evaluation section. Lengths are shorter than the papers' (their models
    # train 10^4-10^5 steps): at the task's own ranges nothing learns arithmetic or S3 in budget.
    # parity: one reflection per 1-bit flips the state (beta = 2); two small layers
    "parity": EvalPreset(n_layers=2, d_model=64, steps=600, batch_size=64, lr=3e-3,
                         mixers=("deltanet_neg", "deltanet")),
    # arithmetic: one scored token per sequence, so more steps; short training expressions
    "arith": EvalPreset(n_layers=2, d_model=64, steps=4000, batch_size=64, lr=3e-3,
                        train_lengths=(3, 20), test_lengths=(20, 64), mixers=("deltanet_neg", "deltanet")),
    "arith_brackets": EvalPreset(n_layers=2, d_model=64, steps=800, batch_size=64, lr=3e-3,
                                 mixers=("deltanet_neg", "deltanet")),
    # groups: one layer (the DeltaProduct paper's S3 contrast is about a single layer); every
    # position scored, so 256 sequences per bucket are plenty
    "s3": EvalPreset(n_layers=1, d_model=64, steps=4000, batch_size=32, lr=3e-3, eval_sequences=256,
                     train_lengths=(2, 16), test_lengths=(16, 64), mixers=("deltaproduct2_neg", "deltanet_neg")),
    "a5": EvalPreset(n_layers=2, d_model=128, steps=800, batch_size=32, lr=2e-3, eval_sequences=256,
                     mixers=("deltaproduct2_neg", "deltanet_neg")),
    "s5": EvalPreset(n_layers=2, d_model=128, steps=800, batch_size=32, lr=2e-3, eval_sequences=256,
                     mixers=("deltaproduct2_neg", "deltanet_neg")),
    # MQAR: two layers (an induction-style lookup needs a previous-token layer); vocabulary 64, the
    # largest a 2-layer d_model 64 attention model solves in a few hundred steps (vocab 256 with
    # 8 pairs is not learned in 1000 steps: the vocabulary sets the difficulty)
    "mqar": EvalPreset(n_layers=2, d_model=64, steps=600, batch_size=64, lr=3e-3, weight_decay=0.1,
                       eval_sequences=256, n_buckets=2, train_lengths=(48, 96), test_lengths=(96, 192),
                       task_options={"vocab_size": 64, "num_pairs": 4},
                       mixers=("attention", "gated_deltanet", "deltanet", "gla", "linear_attention")),
}

FALLBACK = EvalPreset()


def get_preset(task_name: str, **overrides) -> EvalPreset:
    """The preset of ``task_name`` (``FALLBACK`` for a task without one), with ``overrides``
    (fields of :class:`EvalPreset`; ``None`` values are ignored)."""
    base = PRESETS.get(task_name, FALLBACK)
    fields = {f.name for f in dataclasses.fields(EvalPreset)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"preset overrides: unknown field(s) {unknown}; expected from {sorted(fields)}")
    preset = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    for name in ("n_layers", "d_model", "n_heads", "steps", "batch_size", "eval_sequences", "n_buckets"):
        value = getattr(preset, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if preset.head_dim is not None and (not isinstance(preset.head_dim, int) or preset.head_dim < 1):
        raise ValueError(f"head_dim: expected None or a positive integer, got {preset.head_dim!r}")
    if not preset.lr > 0:
        raise ValueError(f"lr: expected a positive number, got {preset.lr!r}")
    return preset


def buckets(train_lengths: tuple[int, int], test_lengths: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """The training range, then ``test_lengths`` split into ``n`` (or fewer) contiguous ranges.

    ``buckets((3, 40), (40, 256), 4)`` -> ``[(3, 40), (40, 93), (94, 147), (148, 201), (202, 256)]``.
    """
    lo, hi = test_lengths
    n = max(1, min(n, hi - lo + 1))
    edges = [lo + i * (hi - lo + 1) // n for i in range(n + 1)]
    return [tuple(train_lengths)] + [(edges[i], edges[i + 1] - 1) for i in range(n)]
