"""Multi-query associative recall, Zoology style (MATH.md section 5).

A sequence of length L with D pairs over a vocabulary V:

1. D distinct keys from ``[1, V // 2)`` and D distinct values from
   ``[V // 2, V)``, written as ``k_1 v_1 k_2 v_2 ... k_D v_D`` (2D tokens).
2. The remaining R = L - 2D positions hold each key exactly once more, as a
   query. Query offsets inside those R positions are drawn without
   replacement with probability proportional to ``(r + 1) ** (power_a - 1)``,
   r = 0 .. R - 1 (Zoology's power law; small ``power_a`` puts queries
   early, ``power_a = 1`` is uniform). Query order is random.
3. Every other position of the R is a filler drawn uniformly from
   ``[1, V)`` minus this sequence's keys (Zoology's ``random_non_queries``,
   without the accidental extra queries), so pad 0 never occurs inside a
   sequence and every key occurs exactly twice.
4. The label at a query's position is its key's value; nothing else is
   scored (the value after a key in the pair section is unpredictable).

Needs L >= 3D; the default length ranges grow with D to keep L >= 4D as in Zoology.
"""

from __future__ import annotations

import math

import torch

from . import IGNORE, Task


class MQARTask(Task):
    """MQAR; default vocabulary 8192, 8 pairs, train lengths 64..256, test 256..512."""

    name = "mqar"

    def __init__(self, *, vocab_size: int = 8192, num_pairs: int = 8, power_a: float = 0.01):
        if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
            raise ValueError(f"mqar: num_pairs must be an int >= 1, got {num_pairs!r}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2 * num_pairs + 2:
            raise ValueError(f"mqar: vocab_size must be an int >= 2 * num_pairs + 2 = {2 * num_pairs + 2} "
                             f"(keys in [1, V/2), values in [V/2, V)), got {vocab_size!r}")
        if isinstance(power_a, bool) or not isinstance(power_a, (int, float)) or not 0 < power_a < math.inf:
            raise ValueError(f"mqar: power_a must be a finite number > 0, got {power_a!r}")
        self.vocab_size, self.num_pairs, self.power_a = vocab_size, num_pairs, float(power_a)
        self.min_length = 3 * num_pairs
        lo = max(64, 4 * num_pairs)
        hi = max(256, lo)
        self.train_lengths = (lo, hi)
        self.test_lengths = (hi, 2 * hi)

    def _generate(self, lengths: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n, width = lengths.numel(), int(lengths.max())
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        for b, length in enumerate(lengths.tolist()):
            input_ids[b, :length], labels[b, :length] = self._row(length, gen)
        return input_ids, labels

    def _row(self, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        d, half = self.num_pairs, self.vocab_size // 2
        ids = torch.empty(length, dtype=torch.long)
        labels = torch.full((length,), IGNORE, dtype=torch.long)
        # 1. the pairs
        keys = torch.randperm(half - 1, generator=gen)[:d] + 1                     # (D,) in [1, V/2)
        values = torch.randperm(self.vocab_size - half, generator=gen)[:d] + half  # (D,) in [V/2, V)
        ids[0 : 2 * d : 2], ids[1 : 2 * d : 2] = keys, values
        # 2. power-law query offsets in the rest
        rest = length - 2 * d
        weights = torch.arange(1, rest + 1, dtype=torch.float64) ** (self.power_a - 1)
        where = 2 * d + torch.multinomial(weights, d, replacement=False, generator=gen)   # (D,)
        # 3. fillers: uniform over [1, V) without this row's keys (redraw the rare hits)
        fill = torch.randint(1, self.vocab_size, (rest,), generator=gen)
        hit = torch.isin(fill, keys)
        while hit.any():
            fill[hit] = torch.randint(1, self.vocab_size, (int(hit.sum()),), generator=gen)
            hit = torch.isin(fill, keys)
        ids[2 * d :] = fill
        # 4. queries and their labels
        ids[where], labels[where] = keys, values
        return ids, labels
