"""Linear scan h_t = A_t h_{t-1} + b_t with diagonal, block-diagonal or dense A (MATH.md section 4)."""

from __future__ import annotations

import torch

from .. import checks, registry
from . import chunk, naive  # noqa: F401  (register the backends)
from ..lazy_triton import register_lazy

register_lazy("scan", "linscan.ops.scan.triton", "scan_triton")


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, *,
                reverse: bool = False, backend: str = "auto",
                chunk_size: int | None = None) -> torch.Tensor:
    """All states of the linear recurrence

        h_t = A_t h_{t-1} + b_t,   h_0 = h0          (t = 1 .. T)
        h_t = A_t h_{t+1} + b_t,   h_{T+1} = h0      (``reverse=True``: scanning from the end)

    Args:
        a: the transitions A_t, one of
            ``[B, T, D]``: diagonal (elementwise, ``A_t = Diag(a_t)``);
            ``[B, T, D/k, k, k]``: block-diagonal, block g acting on channels ``g*k .. g*k+k-1``;
            ``[B, T, D, D]``: dense.
            Same dtype and device as b.
        b: the inputs ``[B, T, D]``.
        h0: the state before the first scanned position ``[B, D]`` (the last one when
            ``reverse``); default zeros.
        reverse: scan from t = T down to 1.
        backend: ``"auto"``, ``"naive"``, ``"chunk"``, ``"triton"`` (diagonal A on a GPU; see ``linscan.ops.available()``).
        chunk_size: positions per chunk for the chunked backend (default ``max(16, ceil(sqrt(T)))``).

    Returns:
        h ``[B, T, D]`` in b's dtype: h[:, t] is the state after position t (computed in
        float64 for float64 inputs, float32 otherwise). Differentiable in a, b and h0; the
        chunked backward is one reverse scan with transposed A (memory O(T D) for diagonal A).
    """
    _check(a, b, h0)
    checks.check_chunk_size(chunk_size)
    fn = registry.get("scan", backend, b.device)
    return fn(a, b, h0, reverse=bool(reverse), chunk_size=chunk_size)


def _check(a, b, h0) -> None:
    checks.expect_floating(b, "b")
    checks.expect_floating(a, "a")
    checks.expect_rank(b, "b", "B T D")
    B, T, D = b.shape
    if T == 0 or D == 0:
        raise ValueError(f"b: expected non-empty T and D, got shape {list(b.shape)}")
    if a.dim() == 3:
        checks.expect_shape(a, "a", "B T D", (B, T, D))
    elif a.dim() == 4:
        checks.expect_shape(a, "a", "B T D D", (B, T, D, D))
    elif a.dim() == 5:
        k = a.shape[-1]
        if k == 0 or D % k:
            raise ValueError(f"a: expected a block size k dividing D = {D} (that of b), "
                             f"got k = {k} from shape {list(a.shape)}")
        checks.expect_shape(a, "a", "B T D/k k k", (B, T, D // k, k, k))
    else:
        raise ValueError(f"a: expected 3 dims [B, T, D] (diagonal), 4 dims [B, T, D, D] (dense) or "
                         f"5 dims [B, T, D/k, k, k] (block-diagonal), got {a.dim()} dims {list(a.shape)}")
    checks.expect_same_dtype(a, "a", b, "b")
    checks.expect_device(a, "a", b.device, "b")
    checks.check_state(h0, "h0", "B D", (B, D), b.device)
