"""Synthetic evaluation tasks (MATH.md section 5): parity, modular arithmetic
with and without brackets, group word problems (S3, A5, S5) and MQAR.

Every task returns aligned (not shifted) labels: ``labels[b, t]`` is the token
the model must output at position ``t`` after reading ``input_ids[b, :t+1]``,
and ``-100`` where nothing is scored (always on padding). Sequences are
right-padded with ``pad_id = 0``, which never occurs inside a sequence, so
``lengths_of`` can count non-pad tokens.

    from linscan.data.tasks import make_task
    task = make_task("parity")
    input_ids, labels = task.sample(64, lengths=task.train_lengths, seed=0)
"""

from __future__ import annotations

import inspect
import operator

import torch

IGNORE = -100      # label of unscored positions (torch cross_entropy's ignore_index)


def _is_int(x) -> bool:
    """True for Python and NumPy/torch-style integers, False for bools and floats."""
    if isinstance(x, bool):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


class Task:
    """Base class: subclasses set ``name``, ``vocab_size``, the default length
    ranges and ``min_length``, and implement ``_generate``."""

    name: str = ""
    pad_id: int = 0
    vocab_size: int
    train_lengths: tuple[int, int]
    test_lengths: tuple[int, int]
    min_length: int = 1          # shortest sequence the task can form

    def sample(self, n: int, lengths: tuple[int, int] | None = None, *, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` sequences, each of a length drawn uniformly from ``lengths``.

        Args:
            n: number of sequences (>= 1).
            lengths: inclusive ``(lo, hi)``; defaults to ``train_lengths``.
            seed: the only source of randomness (a private ``torch.Generator``);
                the same task options, ``n``, ``lengths`` and ``seed`` always
                give the same tensors.
        Returns:
            ``input_ids, labels``: LongTensors ``[n, T]``, ``T`` the longest drawn
            length, right-padded with ``pad_id`` (inputs) and ``-100`` (labels).
        """
        lo, hi = self._check_sample_args(n, lengths, seed)
        gen = torch.Generator().manual_seed(operator.index(seed) % 2**63)   # any int, even beyond 64 bits
        row_lengths = torch.randint(lo, hi + 1, (n,), generator=gen)
        input_ids, labels = self._generate(row_lengths, gen)
        return input_ids, labels

    def lengths_of(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Unpadded length of each row of ``input_ids [n, T]`` -> LongTensor ``[n]``."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"{self.name}.lengths_of: input_ids must be a 2-D tensor [n, T], got {got}")
        return (input_ids != self.pad_id).sum(dim=1)

    def _generate(self, lengths: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences of the given ``lengths [n]``, drawing only from ``gen``."""
        raise NotImplementedError

    def _check_sample_args(self, n, lengths, seed) -> tuple[int, int]:
        if not _is_int(n) or n < 1:
            raise ValueError(f"{self.name}.sample: n must be an int >= 1, got {n!r}")
        if not _is_int(seed):
            raise ValueError(f"{self.name}.sample: seed must be an int, got {seed!r}")
        lengths = self.train_lengths if lengths is None else lengths
        ok = (isinstance(lengths, (tuple, list)) and len(lengths) == 2
              and all(_is_int(x) for x in lengths))
        if not ok or lengths[0] > lengths[1]:
            raise ValueError(f"{self.name}.sample: lengths must be (lo, hi) ints with lo <= hi, got {lengths!r}")
        if lengths[0] < self.min_length:
            raise ValueError(f"{self.name}.sample: lengths lo must be >= {self.min_length} "
                             f"(the shortest {self.name} sequence), got {lengths!r}")
        return operator.index(lengths[0]), operator.index(lengths[1])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"train_lengths={self.train_lengths}, test_lengths={self.test_lengths})")


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-sequence ``(ids, labels)`` lists into two LongTensors ``[n, T]``."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for b, (ids, lab) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[b, : len(lab)] = torch.tensor(lab, dtype=torch.long)
    return input_ids, labels


# Task modules import ``Task`` from this package, so they load after it is defined.
from .arithmetic import ArithBracketsTask, ArithTask  # noqa: E402
from .groups import A5Task, S3Task, S5Task  # noqa: E402
from .mqar import MQARTask  # noqa: E402
from .parity import ParityTask  # noqa: E402

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in
                                (ParityTask, ArithTask, ArithBracketsTask, S3Task, A5Task, S5Task, MQARTask)}


def make_task(name: str, **options) -> Task:
    """Build the task registered as ``name`` with its keyword ``options``.

    Unknown names or options raise ``ValueError`` naming them and listing the valid ones.
    """
    if name not in TASKS:
        raise ValueError(f"make_task: unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    cls = TASKS[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"make_task: unknown option(s) {unknown} for task {name!r}; valid options: {valid or 'none'}")
    return cls(**options)


__all__ = ["IGNORE", "TASKS", "Task", "make_task"]
