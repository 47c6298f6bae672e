"""Learnable commutative monoid (LCM) set aggregation, with sum / mean / max / GRU baselines (MATH.md 10.1).

The operator (Ong & Velickovic, arXiv 2212.08541) symmetrises a GRU cell ``f(x, h)`` (input x,
hidden h, both ``d`` wide)::

    a (+) b = 0.5 [f(a, b) + f(b, a)]

Floating-point addition is commutative, so ``a (+) b`` and ``b (+) a`` are bit-identical; the
operator is only approximately associative (:meth:`LCM.associativity_loss` measures by how much).
:class:`LCM` folds a set with a balanced binary tree: level by level, neighbours ``(0, 1), (2, 3),
...`` are combined; an odd element is carried up unchanged (``identity="carry"``), or combined
with a learnable identity ``e`` (``identity="learned"``). Zero padding is never used: 0 is not
the identity of ``(+)``. Every set in a batch advances one level together, so a batch costs
``ceil(log2 max_n)`` combine calls, against ``max_n`` sequential steps for :class:`GRUAggregator`.

Every aggregator here shares one interface::

    agg(x [n_total, d], index [n_total], dim_size=None) -> [n_sets, d]
    agg.forward_dense(x [B, n, d], mask [B, n] | None) -> [B, d]

``index`` assigns each row of ``x`` to a set (sorted or not); within a set, elements keep the
order in which they appear in ``x`` (it fixes the tree's pairing and the GRU's reading order).
``n_sets`` is ``dim_size`` or ``index.max() + 1``. An empty set gives zeros (``e`` with a
learned identity).

Unverified (MATH.md 10.1): the form and weight of the associativity regulariser, and the
identity regulariser ``||e (+) x - x||^2`` (the paper's abstract names neither precisely).
"""

from __future__ import annotations

import torch
from torch import nn

IDENTITIES = ("carry", "learned")


class LCMCombine(nn.Module):
    """``a (+) b = 0.5 [GRUCell(a, b) + GRUCell(b, a)]`` (GRUCell(input, hidden)), exactly commutative.

    Args:
        d: width of the operands and the result.
    """

    def __init__(self, d: int):
        super().__init__()
        self.d = d
        self.cell = nn.GRUCell(d, d)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b ``[m, d]`` -> ``[m, d]``."""
        # two calls rather than one on cat([a, b]): each f then sees the same rows in the same
        # places whichever operand comes first, so the swap is bit-identical, not just close
        return 0.5 * (self.cell(a, b) + self.cell(b, a))


def _check_segments(x: torch.Tensor, index: torch.Tensor, dim_size: int | None, d: int) -> int:
    """Validate the segment interface; returns the number of sets."""
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"x: expected shape [n_total, d={d}], got {list(x.shape)}")
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.shape[0] != x.shape[0]:
        shape = list(index.shape) if isinstance(index, torch.Tensor) else type(index).__name__
        raise ValueError(f"index: expected shape [n_total={x.shape[0]}], got {shape}")
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise ValueError(f"index: expected an integer dtype, got {index.dtype}")
    if index.numel() and int(index.min()) < 0:
        raise ValueError(f"index: expected set ids >= 0, got {int(index.min())}")
    needed = int(index.max()) + 1 if index.numel() else 0
    if dim_size is None:
        return needed
    if dim_size < needed:
        raise ValueError(f"dim_size: expected >= index.max() + 1 = {needed}, got {dim_size}")
    return dim_size


def _group(x: torch.Tensor, index: torch.Tensor, n_sets: int):
    """Rows grouped by set, order within a set kept.

    Returns x ``[n_total, d]`` sorted by (set, position), set ids ``[n_total]``, positions
    within the set ``[n_total]`` and set sizes ``[n_sets]``.
    """
    index = index.long()
    if index.numel() > 1 and bool((index[1:] < index[:-1]).any()):
        index, perm = torch.sort(index, stable=True)
        x = x[perm]
    counts = torch.bincount(index, minlength=n_sets)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(index.numel(), device=index.device) - starts[index]
    return x, index, pos, counts


def _dense_to_segments(x: torch.Tensor, mask: torch.Tensor | None, d: int):
    """x ``[B, n, d]``, mask ``[B, n]`` (bool; None: all valid) -> rows ``[n_valid, d]``, set ids ``[n_valid]``."""
    if x.dim() != 3 or x.shape[2] != d:
        raise ValueError(f"x: expected shape [B, n, d={d}], got {list(x.shape)}")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask: expected shape {list(x.shape[:2])}, got {list(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask: expected dtype torch.bool, got {mask.dtype}")
    return x[mask], mask.nonzero()[:, 0]


class SetAggregator(nn.Module):
    """Base class: the segment interface, its validation and the dense convenience form.

    Subclasses implement ``_aggregate(x, index, n_sets) -> [n_sets, d]`` on validated input.
    """

    def __init__(self, d: int):
        super().__init__()
        self.d = d

    def forward(self, x: torch.Tensor, index: torch.Tensor, dim_size: int | None = None) -> torch.Tensor:
        """x ``[n_total, d]``, index ``[n_total]`` (set ids, any order) -> ``[n_sets, d]``."""
        n_sets = _check_segments(x, index, dim_size, self.d)
        return self._aggregate(x, index.long(), n_sets)

    def forward_dense(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, n, d]``, mask ``[B, n]`` (True = element; None = all) -> ``[B, d]``.

        The valid elements of row b, in order along n, form set b.
        """
        rows, index = _dense_to_segments(x, mask, self.d)
        return self._aggregate(rows, index, x.shape[0])

    def extra_repr(self) -> str:
        return f"d={self.d}"


class LCM(SetAggregator):
    """Set aggregation by a balanced tree of a learnable commutative operator.

    Args:
        d: element width.
        identity: ``"carry"`` (default): an odd element moves up a level unchanged;
            ``"learned"``: it is combined with a learnable identity ``e`` ``[d]`` (train it
            towards an identity with :meth:`identity_loss`); empty sets then give ``e``.
        combine: the binary operator, a module mapping ``(a [m, d], b [m, d]) -> [m, d]``;
            default :class:`LCMCombine` ``(d)``.
    """

    def __init__(self, d: int, *, identity: str = "carry", combine: nn.Module | None = None):
        super().__init__(d)
        if identity not in IDENTITIES:
            raise ValueError(f"identity: expected one of {IDENTITIES}, got {identity!r}")
        self.identity = identity
        self.combine = LCMCombine(d) if combine is None else combine
        self.e = nn.Parameter(torch.zeros(d)) if identity == "learned" else None

    def _aggregate(self, x: torch.Tensor, index: torch.Tensor, n_sets: int) -> torch.Tensor:
        x, seg, pos, counts = _group(x, index, n_sets)
        # 1. fold: each pass halves every set that still has more than one element
        while x.shape[0] and int(counts.max()) > 1:
            x, seg, pos = self._level(x, seg, pos, counts)
            counts = (counts + 1) // 2
        # 2. one row per non-empty set is left, in set order; empty sets get 0 (or e)
        base = x.new_zeros(n_sets, self.d) if self.e is None else self.e.to(x.dtype).expand(n_sets, self.d)
        return base.index_copy(0, seg, x)

    def _level(self, x: torch.Tensor, seg: torch.Tensor, pos: torch.Tensor, counts: torch.Tensor):
        """One tree level for all sets: x ``[m, d]`` sorted by (seg, pos) -> ``[m', d]``, m' = sum ceil(c / 2)."""
        # 1. rows at even positions survive: the left of a pair, or the odd one out
        rows = (pos % 2 == 0).nonzero()[:, 0]                    # (m',)
        size = counts[seg[rows]]
        paired = (pos[rows] + 1 < size).nonzero()[:, 0]          # its partner is the next row
        left, right = x[rows[paired]], x[rows[paired] + 1]
        # 2. learned identity: the odd one out of a set still being folded is padded with e
        if self.e is not None:
            alone = ((pos[rows] + 1 == size) & (size > 1)).nonzero()[:, 0]
            left = torch.cat([left, x[rows[alone]]])
            right = torch.cat([right, self.e.to(x.dtype).expand(alone.numel(), self.d)])
            paired = torch.cat([paired, alone])
        # 3. one batched combine call for the whole level
        out = x[rows].index_copy(0, paired, self.combine(left, right))
        return out, seg[rows], pos[rows] // 2

    def identity_loss(self, x: torch.Tensor) -> torch.Tensor:
        """``mean_i ||e (+) x_i - x_i||^2`` over rows of x ``[m, d]`` (a scalar; 0 iff e is an identity on x)."""
        if self.e is None:
            raise ValueError(f"identity: identity_loss needs identity='learned', got {self.identity!r}")
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"x: expected shape [m, d={self.d}], got {list(x.shape)}")
        e = self.e.to(x.dtype).expand_as(x)
        return (self.combine(e, x) - x).square().sum(-1).mean()

    def associativity_loss(self, x: torch.Tensor, n_triples: int, *,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean ||(a (+) b) (+) c - a (+) (b (+) c)||^2`` over ``n_triples`` triples drawn from rows of x ``[m, d]``.

        Rows are drawn uniformly with replacement (``generator`` on x's device, optional).
        The weight of this term in a loss is the caller's (MATH.md 10.1: unverified).
        """
        if x.dim() != 2 or x.shape[1] != self.d or x.shape[0] == 0:
            raise ValueError(f"x: expected shape [m >= 1, d={self.d}], got {list(x.shape)}")
        if n_triples < 1:
            raise ValueError(f"n_triples: expected >= 1, got {n_triples}")
        i = torch.randint(x.shape[0], (3, n_triples), generator=generator, device=x.device)
        a, b, c = x[i[0]], x[i[1]], x[i[2]]
        return (self.combine(self.combine(a, b), c) - self.combine(a, self.combine(b, c))).square().sum(-1).mean()

    def extra_repr(self) -> str:
        return f"d={self.d}, identity={self.identity!r}"


class SumAggregator(SetAggregator):
    """Sum of each set's elements."""

    def _aggregate(self, x: torch.Tensor, index: torch.Tensor, n_sets: int) -> torch.Tensor:
        return x.new_zeros(n_sets, self.d).index_add(0, index, x)


class MeanAggregator(SetAggregator):
    """Mean of each set's elements (0 for an empty set)."""

    def _aggregate(self, x: torch.Tensor, index: torch.Tensor, n_sets: int) -> torch.Tensor:
        counts = torch.bincount(index, minlength=n_sets).clamp(min=1).to(x.dtype)
        return x.new_zeros(n_sets, self.d).index_add(0, index, x) / counts[:, None]


class MaxAggregator(SetAggregator):
    """Feature-wise maximum of each set's elements (0 for an empty set)."""

    def _aggregate(self, x: torch.Tensor, index: torch.Tensor, n_sets: int) -> torch.Tensor:
        target = index[:, None].expand_as(x)
        return x.new_zeros(n_sets, self.d).scatter_reduce(0, target, x, reduce="amax", include_self=False)


class GRUAggregator(SetAggregator):
    """A GRU cell (``torch.nn.GRUCell``, zero initial state) read over each set in order; its last state.

    All sets advance together, but a set of n elements costs n sequential steps. A Python loop of
    cells rather than ``torch.nn.GRU``: on CPU the latter's backward over a packed batch grows
    quadratically with n (torch 2.x; ~8x slower than this loop at n = 1024).
    """

    def __init__(self, d: int):
        super().__init__(d)
        self.cell = nn.GRUCell(d, d)

    def _aggregate(self, x: torch.Tensor, index: torch.Tensor, n_sets: int) -> torch.Tensor:
        x, seg, pos, counts = _group(x, index, n_sets)
        out = x.new_zeros(n_sets, self.d)
        if x.shape[0] == 0:
            return out
        # 1. a padded batch of the non-empty sets, longest first
        lengths, ids = torch.sort(counts, descending=True, stable=True)
        n_present = int((lengths > 0).sum())
        lengths, ids = lengths[:n_present], ids[:n_present]              # (S,)
        rank = torch.empty_like(counts).index_copy_(0, ids, torch.arange(n_present, device=ids.device))
        padded = x.new_zeros(n_present, int(lengths[0]), self.d).index_put((rank[seg], pos), x)   # (S, n_max, d)
        # 2. step t advances the sets longer than t (a prefix); a finished set's state is set aside
        longer = (n_present - torch.cumsum(torch.bincount(lengths), 0)).tolist()   # [t]: sets longer than t
        h, finished = x.new_zeros(n_present, self.d), []
        for x_t, k in zip(padded.unbind(1), longer):                     # unbind: a backward linear in n
            if k < h.shape[0]:
                finished.append(h[k:])
                h = h[:k]
            h = self.cell(x_t[:k], h)
        final = torch.cat([h] + finished[::-1])                          # (S, d), longest first
        return out.index_copy(0, ids, final)


AGGREGATORS = {"lcm": LCM, "sum": SumAggregator, "mean": MeanAggregator, "max": MaxAggregator,
               "gru": GRUAggregator}
