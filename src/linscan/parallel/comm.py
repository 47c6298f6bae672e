"""The collectives of sequence parallelism, on torch.distributed (gloo on CPU, NCCL on GPU).

Every sequence-parallel op starts with :func:`resolve` (which group, which rank) and
:func:`check_consistent` (one small all-gather of the arguments' shapes and dtypes, so
that a mismatch is a ``ValueError`` on every rank instead of a hang or garbage inside
the real collective). The bytes each collective sends are added to :data:`traffic`
(``linscan bench sp`` reads it).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

# bytes this process sent, by collective ("all_gather", "all_reduce", ...); reset it freely
traffic: dict[str, int] = {}

_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64, torch.bool]
_MAX_DIMS = 6


@dataclass(frozen=True)
class Ranks:
    """A process group with this process's rank in it and its size."""

    group: object
    rank: int
    world: int


def resolve(group=None) -> Ranks:
    """The group to run on (None: the world), this process's rank in it and its size.

    Raises RuntimeError when torch.distributed is not initialised and ValueError when this
    process is not a member of ``group``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("group: torch.distributed is not initialised; call torch.distributed.init_process_group "
                           "first (or use the single-device op in linscan.ops)")
    group = dist.group.WORLD if group is None else group
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"group: expected a group that contains this process, but global rank "
                         f"{dist.get_rank()} is not a member of it")
    return Ranks(group, rank, dist.get_world_size(group))


def _describe(value) -> list[int]:
    """A fixed-length integer description of one argument: kind, dtype, rank, shape (or a number)."""
    if value is None:
        return [0] * (3 + _MAX_DIMS)
    if torch.is_tensor(value):
        if value.dim() > _MAX_DIMS:                       # never raise here: every rank must reach the gather
            return [4, 0, value.dim(), zlib.crc32(repr(tuple(value.shape)).encode()), *[0] * (_MAX_DIMS - 1)]
        code = _DTYPES.index(value.dtype) if value.dtype in _DTYPES else len(_DTYPES)
        shape = list(value.shape) + [0] * (_MAX_DIMS - value.dim())
        return [1, code, value.dim(), *shape]
    if isinstance(value, float):                     # compared to the bit (scale, eps)
        bits = torch.tensor([value], dtype=torch.float64).view(torch.int64).item()
        return [2, 0, 0, bits, *[0] * (_MAX_DIMS - 1)]
    return [3, 0, 0, zlib.crc32(repr(value).encode()), *[0] * (_MAX_DIMS - 1)]   # not hash(): salted per process


def _show(row: list[int]) -> str:
    kind, code, ndim, *rest = row
    if kind == 0:
        return "None"
    if kind == 1:
        dtype = _DTYPES[code] if code < len(_DTYPES) else "other"
        return f"{dtype} {tuple(rest[:ndim])}"
    return "a different value"


def check_consistent(ranks: Ranks, device: torch.device, *, refused: bool = False, **arguments) -> None:
    """Check with one small all-gather that every rank passed arguments of the same kind.

    arguments: name -> tensor (shape and dtype compared), None, float (compared exactly) or
    any other value (compared by its repr: strings, ints, bools, tuples). Tensors whose values
    must agree too (``cu_seqlens``) can be passed a second time as a value, e.g.
    ``cu_seqlens_values=tuple(cu_seqlens.tolist())``. refused: this rank refused its inputs
    (its own error is raised by the caller; the others learn it here).
    Raises the same ValueError on every rank, naming the first argument that differs.
    """
    names = list(arguments)
    rows = [[int(refused)] + [0] * (2 + _MAX_DIMS)] + [_describe(arguments[n]) for n in names]
    local = torch.tensor(rows, dtype=torch.int64, device=device).reshape(-1)
    gathered = all_gather(local, ranks, kind="check").reshape(ranks.world, len(rows), -1)
    if refused:
        return
    bad = [r for r in range(ranks.world) if gathered[r, 0, 0]]
    if bad:
        raise ValueError(f"rank(s) {bad} of the sequence-parallel group refused their inputs (their error says why)")
    for i, name in enumerate(names, start=1):
        column = gathered[:, i]
        if not (column == column[0]).all():
            seen = {r: _show(column[r].tolist()) for r in range(ranks.world)}
            raise ValueError(f"{name}: expected the same on every rank of the sequence-parallel group, got {seen}")


def _count(kind: str, x: torch.Tensor, factor: int = 1) -> None:
    traffic[kind] = traffic.get(kind, 0) + x.numel() * x.element_size() * factor


def all_gather(x: torch.Tensor, ranks: Ranks, *, kind: str = "all_gather") -> torch.Tensor:
    """``x`` from every rank, stacked: ``[W, *x.shape]`` (rank order). Not differentiable."""
    x = x.contiguous()
    pieces = [torch.empty_like(x) for _ in range(ranks.world)]
    dist.all_gather(pieces, x, group=ranks.group)
    _count(kind, x, ranks.world - 1)
    return torch.stack(pieces)


def all_reduce(x: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum of ``x`` over the ranks (a new tensor). Not differentiable."""
    x = x.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(x, group=ranks.group)
    traffic["all_reduce"] = traffic.get("all_reduce", 0) + 2 * (ranks.world - 1) * x.numel() * x.element_size() // ranks.world
    return x                                            # (a ring all-reduce sends 2 (W-1) / W of x per rank)


def agree(ranks: Ranks, device: torch.device, validate, **arguments):
    """Validate the local arguments and check that every rank passed the same kinds, together.

    validate(): the single-device op's checks on this rank's slice (raising ValueError or
    TypeError). Its error (on the ranks that refused; "rank(s) [...] refused" on the others) or
    a mismatch between ranks is raised after one small all-gather (``check_consistent``), so
    that no rank enters the real collective alone and hangs there. Returns what ``validate``
    returned.
    """
    try:
        result, error = validate(), None
    except (ValueError, TypeError) as e:
        result, error = None, e
    check_consistent(ranks, device, refused=error is not None, **arguments)
    if error is not None:
        raise error
    return result
