"""Registers each family's ``triton`` backend without importing Triton up front.

``import linscan`` must stay fast and must work where Triton is absent, so the
backend is a thin wrapper registered only when Triton is installed; the
family's ``triton.py`` (the only place that imports triton) is loaded on the
first call. On a machine without a GPU the kernels run under Triton's
interpreter (``TRITON_INTERPRET=1``, set before triton is first imported).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

from .registry import register


def triton_installed() -> bool:
    """True when the ``triton`` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def register_lazy(family: str, module: str, function: str) -> None:
    """Register ``module.function`` as the ``triton`` backend of ``family`` when Triton is installed."""
    if not triton_installed():
        return

    @register(family, "triton")
    def run(*args, **kwargs):
        return _load(module, function)(*args, **kwargs)

    run.__doc__ = f"Triton backend of {family!r}: {module}.{function}, loaded on first call."


@functools.cache
def _load(module: str, function: str):
    return getattr(importlib.import_module(module), function)
