"""Parity (MATH.md section 5).

Tokens 1 and 2 encode the bits 0 and 1 (0 is pad). Only the last position is
scored; its label is the parity written with the same tokens: 1 when the
number of 1-bits is even, 2 when it is odd. Vocabulary 3.
"""

from __future__ import annotations

import torch

from . import IGNORE, Task


class ParityTask(Task):
    """Parity of a bit string; train lengths 3..40, test 40..256."""

    name = "parity"
    vocab_size = 3
    train_lengths = (3, 40)
    test_lengths = (40, 256)
    min_length = 1

    def __init__(self):
        pass

    def _generate(self, lengths: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n, width = lengths.numel(), int(lengths.max())
        # 1. random bits, then cut each row to its length
        bits = torch.randint(0, 2, (n, width), generator=gen)                    # (n, T)
        inside = torch.arange(width)[None, :] < lengths[:, None]                  # (n, T)
        input_ids = torch.where(inside, bits + 1, self.pad_id)
        # 2. parity of the whole row, written at its last position
        parity = (bits * inside).sum(dim=1) % 2                                   # (n,)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        labels[torch.arange(n), lengths - 1] = parity + 1
        return input_ids, labels
