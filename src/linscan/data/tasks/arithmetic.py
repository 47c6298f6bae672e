"""Modular arithmetic, without and with brackets (MATH.md section 5).

Both tasks write an expression, then '='; the label at the '=' position (the
last token) is the value of the expression mod M as a number token; nothing
else is scored. Numbers are drawn uniformly from ``range(M)``.

"arith" (no brackets): tokens 0 pad, 1 '+', 2 '-', 3 '*', 4 '=', numbers
from 5 (number x is token 5 + x; vocabulary 5 + M; default M = 5). '*' binds
tighter than '+' and '-'. A sequence of length L is ``k`` operands joined by
``k - 1`` random operators, then '='; that is 2k tokens, so an odd length gets
exactly one unary minus on a random operand (``3 * - 2 + 4 =``, read as in
Python: ``3 * (-2) + 4``). Shortest sequence: ``n =`` (length 2).

"arith_brackets": tokens 0 pad, 1 '+', 2 '-', 3 '*', 4 '(', 5 ')', 6 '=',
numbers from 7 (vocabulary 7 + M; default M = 8). Expressions are built
recursively from the forms ``(L op R)``, ``n``, ``-n``, ``(n)``, ``(-n)``.
Length control is exact: an expression of E tokens (E = L - 1) is the leaf
form of that size when E <= 4 (1: n, 2: -n, 3: (n), 4: (-n)); otherwise it
is ``(L op R)`` with the E - 3 inner tokens split uniformly at random between
L and R (each >= 1 token). ``max_depth`` bounds the nesting of ``(L op R)``
(0: a single leaf); depth d holds at most 7 * 2**d - 3 expression tokens, so
longer requests raise ``ValueError``; the split range is narrowed so that
both halves fit the remaining depth.
"""

from __future__ import annotations

import random

import torch

from . import IGNORE, Task, pad_rows

PLUS, MINUS, TIMES = 1, 2, 3


def _check_modulus(task: str, modulus) -> int:
    if isinstance(modulus, bool) or not isinstance(modulus, int) or modulus < 2:
        raise ValueError(f"{task}: modulus must be an int >= 2, got {modulus!r}")
    return modulus


def _python_rng(gen: torch.Generator) -> random.Random:
    """A private ``random.Random`` seeded from ``gen`` (keeps sampling deterministic per seed)."""
    return random.Random(int(torch.randint(0, 2**62, (1,), generator=gen)))


def _apply(op: int, left: int, right: int, modulus: int) -> int:
    if op == PLUS:
        return (left + right) % modulus
    if op == MINUS:
        return (left - right) % modulus
    return (left * right) % modulus


class ArithTask(Task):
    """Modular arithmetic without brackets; train lengths 3..40, test 40..256."""

    name = "arith"
    EQUALS, NUMBER0 = 4, 5
    train_lengths = (3, 40)
    test_lengths = (40, 256)
    min_length = 2

    def __init__(self, *, modulus: int = 5):
        self.modulus = _check_modulus(self.name, modulus)
        self.vocab_size = self.NUMBER0 + self.modulus

    def _generate(self, lengths: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rng = _python_rng(gen)
        rows = []
        for length in lengths.tolist():
            tokens, value = self._expression(length, rng)
            rows.append((tokens, [IGNORE] * (length - 1) + [self.NUMBER0 + value]))
        return pad_rows(rows, self.pad_id)

    def _expression(self, length: int, rng: random.Random) -> tuple[list[int], int]:
        """Tokens of one expression of ``length`` tokens (with '='), and its value mod M."""
        m = self.modulus
        # 1. shape: k operands, one unary minus iff the length is odd
        negate = length % 2
        k = (length - negate) // 2
        negated = rng.randrange(k) if negate else -1
        # 2. tokens, left to right, with the value accumulated as a sum of products
        total, term, tokens = 0, 0, []
        for j in range(k):
            op = rng.choice((PLUS, MINUS, TIMES)) if j else PLUS
            x = rng.randrange(m)
            signed = -x if j == negated else x
            if j:
                tokens.append(op)
            if j == negated:
                tokens.append(MINUS)
            tokens.append(self.NUMBER0 + x)
            if op == TIMES:
                term = term * signed % m
            else:
                total, term = (total + term) % m, (signed if op == PLUS else -signed) % m
        tokens.append(self.EQUALS)
        return tokens, (total + term) % m


def _max_expression_tokens(depth: int | None) -> float:
    """Most expression tokens with ``(L op R)`` nested ``depth`` deep: 4, 11, 25, ... = 7 * 2**d - 3."""
    return float("inf") if depth is None else 7 * 2**depth - 3


class ArithBracketsTask(Task):
    """Modular arithmetic with brackets; train lengths 3..40, test 40..256."""

    name = "arith_brackets"
    OPEN, CLOSE, EQUALS, NUMBER0 = 4, 5, 6, 7
    train_lengths = (3, 40)
    test_lengths = (40, 256)
    min_length = 2

    def __init__(self, *, modulus: int = 8, max_depth: int | None = None):
        self.modulus = _check_modulus(self.name, modulus)
        if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0):
            raise ValueError(f"{self.name}: max_depth must be None or an int >= 0, got {max_depth!r}")
        self.max_depth = max_depth
        self.vocab_size = self.NUMBER0 + self.modulus

    def _check_sample_args(self, n, lengths, seed) -> tuple[int, int]:
        lo, hi = super()._check_sample_args(n, lengths, seed)
        longest = _max_expression_tokens(self.max_depth) + 1
        if hi > longest:
            raise ValueError(f"{self.name}.sample: lengths hi must be <= {int(longest)} with "
                             f"max_depth={self.max_depth}, got {(lo, hi)}")
        return lo, hi

    def _generate(self, lengths: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rng = _python_rng(gen)
        rows = []
        for length in lengths.tolist():
            tokens, value = self._expression(length - 1, rng)
            rows.append((tokens + [self.EQUALS], [IGNORE] * (length - 1) + [self.NUMBER0 + value]))
        return pad_rows(rows, self.pad_id)

    def _leaf(self, size: int, rng: random.Random) -> tuple[list[int], int]:
        x = rng.randrange(self.modulus)
        number = self.NUMBER0 + x
        forms = {1: [number], 2: [MINUS, number], 3: [self.OPEN, number, self.CLOSE],
                 4: [self.OPEN, MINUS, number, self.CLOSE]}
        return forms[size], (-x if size in (2, 4) else x) % self.modulus

    def _expression(self, size: int, rng: random.Random) -> tuple[list[int], int]:
        """Tokens of an expression of exactly ``size`` tokens and its value mod M.

        Iterative (an explicit work stack, pre-order emission, post-order
        evaluation) so long sequences cannot hit Python's recursion limit.
        """
        tokens, values = [], []
        work = [("expr", size, self.max_depth)]
        while work:
            kind, a, b = work.pop()
            if kind == "tok":
                tokens.append(a)
            elif kind == "apply":
                right, left = values.pop(), values.pop()
                values.append(_apply(a, left, right, self.modulus))
            elif a <= 4:
                leaf, value = self._leaf(a, rng)
                tokens.extend(leaf)
                values.append(value)
            else:
                child_depth = None if b is None else b - 1
                cap = _max_expression_tokens(child_depth)
                left = rng.randint(int(max(1, a - 3 - cap)), int(min(a - 4, cap)))
                op = rng.choice((PLUS, MINUS, TIMES))
                tokens.append(self.OPEN)
                work += [("apply", op, None), ("tok", self.CLOSE, None), ("expr", a - 3 - left, child_depth),
                         ("tok", op, None), ("expr", left, child_depth)]
        return tokens, values[0]
