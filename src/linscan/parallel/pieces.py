"""Which sequences a rank's slice holds, and which of them cross its edges.

Rank r holds tokens ``[r L, (r + 1) L)`` of the packed sequence (``L`` = tokens per rank).
Without ``cu_seqlens`` every one of the B batch rows is one sequence spanning all ranks;
with it (B == 1, global offsets) a rank holds pieces of the sequences that overlap its
slice: the first may have started on an earlier rank, the last may go on to a later one.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass


@dataclass(frozen=True)
class Pieces:
    """The pieces of sequences on one rank.

    first, last: global indices of the first and last sequence with tokens on this rank
        (without cu_seqlens both 0: the B batch rows travel together as one piece).
    carried_in: the first sequence started on an earlier rank (its entry state comes from the merge).
    carried_out: the last sequence goes on to a later rank (its exit state is passed on).
    start_rank: the rank on which ``first`` started.
    local_cu: offsets of the pieces inside the rank's slice (None without cu_seqlens).
    """

    first: int
    last: int
    carried_in: bool
    carried_out: bool
    start_rank: int
    local_cu: list[int] | None

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def ending(self):
        """(local row, sequence) of the sequences whose last token is on this rank."""
        for j, n in enumerate(range(self.first, self.last + 1)):
            if not (j == self.count - 1 and self.carried_out):
                yield j, n

    @property
    def single(self) -> bool:
        """One piece only: the whole slice lies inside one sequence."""
        return self.first == self.last


def pieces(cu: list[int] | None, rank: int, world: int, L: int, batch: int) -> Pieces:
    """The pieces of rank ``rank`` (cu: global offsets as a list, or None for ``batch`` full rows)."""
    if cu is None:                  # B rows, each one sequence over all ranks: one piece of B rows
        return Pieces(0, 0, rank > 0, rank < world - 1, 0, None)
    start, end = rank * L, (rank + 1) * L
    first = bisect_right(cu, start) - 1
    last = bisect_right(cu, end - 1) - 1
    local = [0] + [c - start for c in cu[first + 1:last + 1]] + [L]
    return Pieces(first, last, cu[first] < start, cu[last + 1] > end, cu[first] // L, local)


def all_pieces(cu: list[int] | None, world: int, L: int, batch: int) -> list[Pieces]:
    return [pieces(cu, r, world, L, batch) for r in range(world)]
