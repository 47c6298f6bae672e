"""Pure helpers of the GPU benchmark (:mod:`linscan.bench.gpu`): work counts, the gate rule, the bars.

Nothing here touches a device, so all of it is unit-tested on the CPU.

FLOP estimates (one call, B sequences of T tokens, H heads, chunk C, every
multiply-add counted as 2 FLOPs; masked halves of the C x C blocks counted in
full, as a chunkwise kernel computes them; gate and normaliser arithmetic
(O(T H K)) not counted):

    decay (scalar or diagonal g), per token and head:
        scores Q K^T (C K) + intra A V (C V) + inter Q S (K V) + state K^T V (K V)
        fwd = 2 B T H (C (K + V) + 2 K V)                      (BENCH.md "Limits")
    mlstm: the decay count (the normaliser row n adds one column to V; ignored)
    delta, R Householder rows per token (R = 1: gated DeltaNet), C rows per chunk:
        per row:   K K^T (C K) + T K (C K) + T V (C V) + W S (K V) + K^T V_new (K V)
        per token: Q K^T (C K) + A V_new (C V) + Q S (K V)
        fwd = 2 B T H (R (2 C K + C V + 2 K V) + C K + C V + K V)
        (the C x C triangular inverse, about C^2 / 3 per row, is left out)
    sdpa, causal: fwd = 2 B H T^2 K (Q K^T and P V over the lower half: 4 B H T^2 K / 2)

    fwd+bwd = 3 x fwd for the scans (every product of the forward has two gradient
    products; recomputation not counted) and 3.5 x fwd for SDPA (FlashAttention's
    convention: the backward recomputes the scores, 2.5 x fwd).

Bytes (the fewest a call must move): every input read once and the output written
once (fwd); fwd+bwd adds the output gradient read and every input gradient written,
i.e. 2 x (inputs + output). Achieved rates are these counts over the measured time,
and their fractions of the ceilings measured in the same run (bf16 matmul TFLOP/s,
device-to-device copy GB/s counting bytes read plus written).
"""

from __future__ import annotations

import math

import torch

FWD_BWD_FACTOR = {"decay": 3.0, "mlstm": 3.0, "delta": 3.0, "sdpa": 3.5}
GATE_FACTOR, GATE_SLACK = 2.0, 1e-3


def scan_flops(kind: str, *, B: int, T: int, H: int, K: int, V: int, chunk: int = 64, R: int = 1,
               mode: str = "fwd") -> float:
    """Estimated FLOPs of one call (see the module docstring).

    Args:
        kind: ``"decay"``, ``"mlstm"``, ``"delta"`` or ``"sdpa"``.
        B, T, H, K, V: batch, tokens, heads, key and value widths.
        chunk: C, tokens per chunk (decay, mlstm) or Householder rows per chunk (delta).
        R: Householder rows per token (delta only).
        mode: ``"fwd"`` or ``"fwd+bwd"``.
    """
    if kind not in FWD_BWD_FACTOR:
        raise ValueError(f"kind: expected one of {sorted(FWD_BWD_FACTOR)}, got {kind!r}")
    if mode not in ("fwd", "fwd+bwd"):
        raise ValueError(f"mode: expected 'fwd' or 'fwd+bwd', got {mode!r}")
    C = chunk
    if kind in ("decay", "mlstm"):
        per_token = C * (K + V) + 2 * K * V
    elif kind == "delta":
        per_token = R * (2 * C * K + C * V + 2 * K * V) + C * K + C * V + K * V
    else:
        per_token = T * K            # 2 B H T^2 K = 2 B T H (T K)
    fwd = 2.0 * B * T * H * per_token
    return fwd if mode == "fwd" else FWD_BWD_FACTOR[kind] * fwd


def tensor_bytes(tensors) -> int:
    """Bytes held by ``tensors`` (an iterable of tensors; None entries are skipped)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def io_bytes(input_bytes: int, output_bytes: int, mode: str) -> int:
    """The fewest bytes one call moves: inputs + output (fwd); twice that for fwd+bwd (see above)."""
    if mode not in ("fwd", "fwd+bwd"):
        raise ValueError(f"mode: expected 'fwd' or 'fwd+bwd', got {mode!r}")
    return (input_bytes + output_bytes) * (1 if mode == "fwd" else 2)


def rates(flops: float, nbytes: int, ms: float | None, ceilings: dict) -> dict:
    """Achieved TFLOP/s and GB/s of a call taking ``ms`` and their fractions of the ``ceilings``
    (``{"matmul_tflops": ..., "copy_gbs": ...}``, either may be None); None where unknown."""
    if ms is None or ms <= 0:
        return {"tflops": None, "gbs": None, "frac_matmul": None, "frac_copy": None}
    tflops, gbs = flops / (ms * 1e-3) / 1e12, nbytes / (ms * 1e-3) / 1e9
    mm, cp = ceilings.get("matmul_tflops"), ceilings.get("copy_gbs")
    return {"tflops": tflops, "gbs": gbs, "frac_matmul": tflops / mm if mm else None,
            "frac_copy": gbs / cp if cp else None}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64 (NaN when x is not finite; inf when ref is zero and x is not)."""
    x, ref = x.detach().double(), ref.detach().double()
    if x.shape != ref.shape:
        raise ValueError(f"x: expected shape {tuple(ref.shape)} (the reference's), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        return math.nan
    den = ref.norm().item()
    num = (x - ref).norm().item()
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def gate_passes(err: float, err_low: float, *, factor: float = GATE_FACTOR, slack: float = GATE_SLACK) -> bool:
    """The correctness rule: ``err <= factor * err_low + slack`` (NaN on either side fails)."""
    if not (math.isfinite(err) and math.isfinite(err_low)):
        return False
    return err <= factor * err_low + slack


def gate_verdict(errors: dict[str, float], errors_low: dict[str, float]) -> tuple[bool, list[str]]:
    """PASS when every tensor (output and gradients) passes :func:`gate_passes`; the failing names."""
    missing = sorted(set(errors_low) - set(errors))
    failing = missing + [name for name in errors if not gate_passes(errors[name], errors_low.get(name, math.nan))]
    return not failing and bool(errors), failing
