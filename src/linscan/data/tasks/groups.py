"""Group word problems S3, A5, S5 (MATH.md section 5).

Elements are permutations of ``range(k)`` written as tuples ``p`` with
``p[i]`` the image of ``i``, listed in the lexicographic order of
``itertools.permutations(range(k))`` (A5 keeps only the even ones, in the
same order). Element ``j`` of that list is token ``j + 1``; 0 is pad, so the
vocabulary is ``|G| + 1``.

Composition order: the word is read left to right and each new element is
applied after the product so far,

    P_1 = g_1,    P_t = g_t o P_{t-1},    i.e.  P_t[i] = g_t[P_{t-1}[i]],

so ``P_t`` maps ``i`` to where ``g_1`` then ``g_2`` ... then ``g_t`` send it.
Every position is scored: its label is the token of ``P_t``.
"""

from __future__ import annotations

import itertools

import torch

from . import IGNORE, Task


def _is_even(p: tuple[int, ...]) -> bool:
    inversions = sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p)))
    return inversions % 2 == 0


class GroupTask(Task):
    """Running product of uniformly drawn group elements; train lengths 2..128, test 128..512."""

    degree: int = 0              # permutations of range(degree)
    even_only: bool = False      # True: the alternating group
    train_lengths = (2, 128)
    test_lengths = (128, 512)
    min_length = 1

    def __init__(self):
        # 1. the element list and its index
        perms = itertools.permutations(range(self.degree))
        self.elements: list[tuple[int, ...]] = [p for p in perms if _is_even(p) or not self.even_only]
        index = {p: j for j, p in enumerate(self.elements)}
        # 2. Cayley table: table[a, g] = index of g o a (apply a, then g)
        size = len(self.elements)
        self.table = torch.tensor([[index[tuple(g[i] for i in a)] for g in self.elements]
                                   for a in self.elements], dtype=torch.long)   # (|G|, |G|)
        self.vocab_size = size + 1

    def _generate(self, lengths: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n, width = lengths.numel(), int(lengths.max())
        elems = torch.randint(0, len(self.elements), (n, width), generator=gen)  # (n, T)
        products = torch.empty_like(elems)
        running = elems[:, 0]
        products[:, 0] = running
        for t in range(1, width):
            running = self.table[running, elems[:, t]]
            products[:, t] = running
        inside = torch.arange(width)[None, :] < lengths[:, None]                # (n, T)
        input_ids = torch.where(inside, elems + 1, self.pad_id)
        labels = torch.where(inside, products + 1, IGNORE)
        return input_ids, labels


class S3Task(GroupTask):
    """Symmetric group on 3 points (6 elements, vocabulary 7)."""

    name, degree, even_only = "s3", 3, False


class A5Task(GroupTask):
    """Alternating group on 5 points (60 even permutations, vocabulary 61)."""

    name, degree, even_only = "a5", 5, True


class S5Task(GroupTask):
    """Symmetric group on 5 points (120 elements, vocabulary 121)."""

    name, degree, even_only = "s5", 5, False
