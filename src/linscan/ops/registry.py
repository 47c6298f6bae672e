"""Backend registry: one name per family, several interchangeable backends.

Every backend of a family shares the family's signature, so callers (layers,
benchmarks, tests) pick an implementation by name and never branch on device.

    register("decay", "chunk")(fn)      # done by the backend modules on import
    get("decay", "auto", device)        # -> fn
    available()                         # -> {"decay": ["chunk", "naive"], ...}

``backend="auto"`` resolves to the environment variable ``LINSCAN_BACKEND``
when set, else to ``"triton"`` for CUDA tensors when a triton backend is
registered, else to the family's fast CPU backend: ``"chunk"`` (1-D scans) or
``"sweep"`` (2-D grids).
"""

from __future__ import annotations

import os
from typing import Callable

import torch

_BACKENDS: dict[str, dict[str, Callable]] = {}


def register(family: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as ``backend`` of ``family``."""

    def wrap(fn: Callable) -> Callable:
        _BACKENDS.setdefault(family, {})[backend] = fn
        return fn

    return wrap


def available() -> dict[str, list[str]]:
    """The registered backends of every family, e.g. ``{"decay": ["chunk", "naive"]}``."""
    return {family: sorted(impls) for family, impls in sorted(_BACKENDS.items())}


def resolve(family: str, backend: str = "auto", device: torch.device | str | None = None) -> str:
    """The concrete backend name that ``backend`` means for ``family`` on ``device``."""
    if family not in _BACKENDS:
        raise ValueError(f"family: expected one of {sorted(_BACKENDS)}, got {family!r}")
    impls = _BACKENDS[family]
    if backend == "auto":
        backend = os.environ.get("LINSCAN_BACKEND", "").strip() or _default(impls, device)
        origin = "LINSCAN_BACKEND" if os.environ.get("LINSCAN_BACKEND", "").strip() else "backend"
        if origin == "LINSCAN_BACKEND" and backend not in impls and _known(backend):
            backend = _default(impls, device)    # e.g. "chunk" for the scans: the grids' own default
    else:
        origin = "backend"
    if backend not in impls:
        raise ValueError(
            f"{origin}: expected one of {sorted(impls) + ['auto']} for family {family!r}, got {backend!r}"
        )
    return backend


def _known(backend: str) -> bool:
    """Whether some family registers ``backend``."""
    return any(backend in impls for impls in _BACKENDS.values())


def get(family: str, backend: str = "auto", device: torch.device | str | None = None) -> Callable:
    """The function implementing ``family`` with ``backend`` (``"auto"`` resolved for ``device``)."""
    name = resolve(family, backend, device)
    return _BACKENDS[family][name]


# the fast CPU backend of a family: chunkwise for the 1-D scans, tiles (pLSTM) or a row sweep for the 2-D grids
FAST = ("chunk", "tile", "sweep")


def _default(impls: dict[str, Callable], device: torch.device | str | None) -> str:
    if device is not None and torch.device(device).type == "cuda" and "triton" in impls:
        return "triton"
    return next((name for name in FAST if name in impls), "chunk")
