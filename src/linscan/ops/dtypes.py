"""Precision policy shared by the backends.

Computation runs in float64 when the inputs are float64 (so the references
are exact) and in float32 otherwise (bf16/fp16 inputs are upcast). Outputs
come back in q's dtype; states stay in the compute dtype: float32, or float64
for float64 inputs.
"""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def upcast(*xs, dtype: torch.dtype):
    """Each tensor converted to ``dtype`` (None passes through)."""
    return tuple(None if x is None else x.to(dtype) for x in xs)
