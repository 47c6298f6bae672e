"""How layers run sequence-parallel (``linscan.parallel.sequence_parallel`` turns it on).

A module whose ``sequence_group`` is set (a ``linscan.parallel.comm.Ranks``) holds only its
rank's slice of every sequence: it calls the sequence-parallel op instead of the local one
(:func:`op`), numbers its tokens from the rank's first one (:func:`offset`), and a short
convolution reads the previous rank's last inputs (``ShortConv``).
"""

from __future__ import annotations

import functools


def group_of(module):
    """The module's ``Ranks`` under sequence parallelism, else None."""
    return getattr(module, "sequence_group", None)


def op(module, name: str, local):
    """``local`` (a ``linscan.ops`` function), or its ``linscan.parallel`` counterpart ``name``
    bound to the module's group when the module runs sequence-parallel."""
    ranks = group_of(module)
    if ranks is None:
        return local
    from .. import parallel

    return functools.partial(getattr(parallel, name), group=ranks.group)


def offset(module, T: int) -> int:
    """Global position of this rank's first token (each rank holds T of them); 0 without SP."""
    ranks = group_of(module)
    return 0 if ranks is None else ranks.rank * T


def refuse_state(module, state, cu_seqlens) -> None:
    """Sequence-parallel layers train on whole sequences: no decode state, no packed batches (yet)."""
    if group_of(module) is None:
        return
    if state is not None:
        raise ValueError("state: expected None under sequence parallelism (it runs whole sequences; "
                         "decode on one device)")
    if cu_seqlens is not None:
        raise ValueError("cu_seqlens: packed batches are not supported by sequence-parallel layers yet "
                         "(the ops in linscan.parallel take them)")
