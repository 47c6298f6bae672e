"""Input validation shared by every op.

Each check raises ``ValueError`` (shape, device, value) or ``TypeError``
(dtype) naming the argument, what was expected and what was received.
Value checks (``g <= 0``, ``beta`` in [0, 2]) let NaN through: NaN in the
inputs propagates to the outputs instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dims:
    """Sizes read off validated inputs. ``R`` is the Householder axis (1 if absent)."""

    B: int
    T: int
    H: int
    K: int
    V: int
    R: int = 1


def _fmt(symbols: str, sizes) -> str:
    return f"[{', '.join(symbols.split())}] = {list(sizes)}"


def expect_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")


def expect_floating(x: torch.Tensor, name: str) -> None:
    expect_tensor(x, name)
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point dtype, got {x.dtype}")


def expect_shape(x: torch.Tensor, name: str, symbols: str, sizes: tuple[int, ...]) -> None:
    """Raise unless ``x.shape == sizes``; ``symbols`` names the axes, e.g. ``"B T H K"``."""
    if tuple(x.shape) != tuple(sizes):
        raise ValueError(f"{name}: expected shape {_fmt(symbols, sizes)}, got {list(x.shape)}")


def expect_rank(x: torch.Tensor, name: str, symbols: str) -> None:
    n = len(symbols.split())
    if x.dim() != n:
        raise ValueError(
            f"{name}: expected {n} dims [{', '.join(symbols.split())}], got {x.dim()} dims {list(x.shape)}"
        )


def expect_device(x: torch.Tensor, name: str, device: torch.device, ref_name: str = "q") -> None:
    if x.device != device:
        raise ValueError(f"{name}: expected device {device} (that of {ref_name}), got {x.device}")


def expect_same_dtype(x: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str = "q") -> None:
    if x.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (that of {ref_name}), got {x.dtype}")


def check_qkv(q, k, v, *, householder: bool = False) -> Dims:
    """Validate ``q [B,T,H,K]``, ``k``, ``v`` (``[B,T,R,H,*]`` when ``householder``); return the sizes.

    ``householder=True`` accepts both the plain layout and the DeltaProduct
    layout with an extra axis R after T (k, v must agree).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        expect_floating(x, name)
    expect_rank(q, "q", "B T H K")
    B, T, H, K = q.shape
    R = 1
    if householder and k.dim() == 5:
        R = k.shape[2]
        expect_shape(k, "k", "B T R H K", (B, T, R, H, K))
        expect_rank(v, "v", "B T R H V")
        expect_shape(v, "v", "B T R H V", (B, T, R, H, v.shape[-1]))
    else:
        expect_shape(k, "k", "B T H K", (B, T, H, K))
        expect_rank(v, "v", "B T H V")
        expect_shape(v, "v", "B T H V", (B, T, H, v.shape[-1]))
    for name, x in (("k", k), ("v", v)):
        expect_same_dtype(x, name, q)
        expect_device(x, name, q.device)
    if T == 0 or K == 0 or v.shape[-1] == 0 or R == 0:
        raise ValueError(f"q, k, v: expected non-empty T, R, K and V, got q {list(q.shape)}, v {list(v.shape)}")
    return Dims(B, T, H, K, v.shape[-1], R)


def check_gate(x, name: str, forms: dict[str, tuple[int, ...]], device: torch.device, *,
               max_value: float | None = 0.0):
    """Validate an optional per-token gate against the allowed ``forms`` (symbols -> sizes).

    With ``max_value`` set (log-decays), values above it raise; NaN passes.
    """
    if x is None:
        return None
    expect_floating(x, name)
    expect_device(x, name, device)
    shape = tuple(x.shape)
    if shape not in forms.values():
        allowed = " or ".join(_fmt(sym, sz) for sym, sz in forms.items())
        raise ValueError(f"{name}: expected shape {allowed}, got {list(shape)}")
    if max_value is not None and bool((x > max_value).any()):
        worst = x.detach().max().item()
        raise ValueError(f"{name}: expected log-decay values <= {max_value:g}, got a maximum of {worst:g}")
    return x


def check_range(x: torch.Tensor, name: str, low: float, high: float) -> None:
    """Raise if any value of ``x`` lies outside [low, high] (NaN passes)."""
    bad = (x < low) | (x > high)
    if bool(bad.any()):
        lo, hi = x.detach().min().item(), x.detach().max().item()
        raise ValueError(f"{name}: expected values in [{low:g}, {high:g}], got range [{lo:g}, {hi:g}]")


def check_cu_seqlens(cu_seqlens, dims: Dims, device: torch.device) -> int:
    """Validate FlashAttention-style offsets ``[N + 1]``; return N (or B when ``cu_seqlens`` is None)."""
    if cu_seqlens is None:
        return dims.B
    expect_tensor(cu_seqlens, "cu_seqlens")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens: expected dtype torch.int32 or torch.int64, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens: expected a 1-D tensor [N + 1] with N >= 1, got shape {list(cu_seqlens.shape)}")
    expect_device(cu_seqlens, "cu_seqlens", device)
    if dims.B != 1:
        raise ValueError(f"cu_seqlens: expected packed input with B == 1, got B = {dims.B}")
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens: expected cu_seqlens[0] == 0, got {offsets[0]}")
    if any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"cu_seqlens: expected strictly increasing offsets, got {offsets}")
    if offsets[-1] != dims.T:
        raise ValueError(f"cu_seqlens: expected cu_seqlens[-1] == T = {dims.T}, got {offsets[-1]}")
    return len(offsets) - 1


def check_sequences(dims: Dims, cu_seqlens, initial_state, chunk_size, device: torch.device) -> int:
    """The options shared by the matrix-state ops: ``cu_seqlens``, an ``initial_state``
    ``[N, H, K, V]`` and ``chunk_size``; returns N (sequences, or B)."""
    N = check_cu_seqlens(cu_seqlens, dims, device)
    check_state(initial_state, "initial_state", "N H K V", (N, dims.H, dims.K, dims.V), device)
    check_chunk_size(chunk_size)
    return N


def check_state(x, name: str, symbols: str, sizes: tuple[int, ...], device: torch.device) -> None:
    """Validate an optional float state tensor against ``sizes``."""
    if x is None:
        return
    expect_floating(x, name)
    expect_shape(x, name, symbols, sizes)
    expect_device(x, name, device)


def check_scale(scale, K: int) -> float:
    """``scale`` or its default ``1/sqrt(K)``, as a float."""
    if scale is None:
        return K ** -0.5
    if isinstance(scale, torch.Tensor) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale: expected a Python float or None, got {type(scale).__name__}")
    return float(scale)


def check_chunk_size(chunk_size) -> None:
    if chunk_size is None:
        return
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
