"""mLSTM family (xLSTM's matrix memory) with exponential or sigmoid input gates."""

from __future__ import annotations

import torch

from .. import checks, registry
from . import chunk, naive  # noqa: F401  (register the backends)
from ..lazy_triton import register_lazy

register_lazy("mlstm", "linscan.ops.mlstm.triton", "mlstm_triton")
from .step import check_input_gate


def mlstm_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, *,
               input_gate: str = "exp", normalize: bool = True,
               initial_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
               output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
               backend: str = "auto", chunk_size: int | None = None, eps: float = 1e-6):
    """The mLSTM matrix memory (MATH.md section 3), with q^ = q / sqrt(K).

    Exponential input gate (``input_gate="exp"``), stabilised by the max-state m:

        m_t = max(logsigmoid(f_t) + m_{t-1}, i_t)
        C_t = e^{logsigmoid(f_t) + m_{t-1} - m_t} C_{t-1} + e^{i_t - m_t} k_t v_t^T
        n_t = e^{logsigmoid(f_t) + m_{t-1} - m_t} n_{t-1} + e^{i_t - m_t} k_t
        h_t = C_t^T q^_t / (max(|q^_t . n_t|, e^{-m_t}) + eps)

    Sigmoid input gate (``input_gate="sigmoid"``): C_t = sigmoid(f_t) C_{t-1} +
    sigmoid(i_t) k_t v_t^T (n alike), m stays 0, and h_t = C_t^T q^_t / (max(|q^_t . n_t|, 1) + eps).

    The state is stored stabilised: the true memory is C e^m and n e^m. With
    ``normalize=False`` the output is that true, representation-independent
    readout h_t = e^{m_t} C_t^T q^_t (for the sigmoid gate simply C_t^T q^_t);
    with large input gates it can exceed the float32 range (e^m overflows for m > ~88).

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (same dtype and device).
        i, f: raw input and forget gate pre-activations ``[B, T, H]`` (any float dtype).
        input_gate: ``"exp"`` (mLSTMexp, xLSTM) or ``"sigmoid"`` (mLSTMsig).
        normalize: divide by the normaliser (above); otherwise return e^m C^T q^.
        initial_state: ``(C [N, H, K, V], n [N, H, K], m [N, H])`` before the first token
            (default zeros, m = 0 included, as in mlstm_kernels); N = B, or the number of
            sequences with ``cu_seqlens``. With the sigmoid gate a given m is folded into
            C and n (C e^m, n e^m), so a state means the same memory under both gates.
        output_final_state: also return the state after the last token.
        cu_seqlens: int ``[N + 1]`` offsets of a packed batch (B must be 1); every
            sequence starts from its own ``initial_state`` row and gets its own final state.
        backend: ``"auto"``, ``"naive"``, ``"chunk"`` (see ``linscan.ops.available()``).
        chunk_size: chunk length for chunkwise backends (default 64).
        eps: added to the normaliser (in the stabilised units, as in mlstm_kernels).

    Returns:
        h ``[B, T, H, V]`` in q's dtype, and the final state ``(C, n, m)`` (float32,
        float64 for float64 inputs; m is all zeros for the sigmoid gate) or None unless
        ``output_final_state``.
    """
    check_input_gate(input_gate)
    dims = checks.check_qkv(q, k, v)
    B, T, H, K, V = dims.B, dims.T, dims.H, dims.K, dims.V
    i = checks.check_gate(i, "i", {"B T H": (B, T, H)}, q.device, max_value=None)
    f = checks.check_gate(f, "f", {"B T H": (B, T, H)}, q.device, max_value=None)
    for name, x in (("i", i), ("f", f)):
        if x is None:
            raise TypeError(f"{name}: expected a torch.Tensor [B, T, H], got None")
    N = checks.check_cu_seqlens(cu_seqlens, dims, q.device)
    _check_initial_state(initial_state, (N, H, K, V), q.device)
    checks.check_chunk_size(chunk_size)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps: expected a Python float >= 0, got {eps!r}")
    fn = registry.get("mlstm", backend, q.device)
    return fn(q, k, v, i, f, input_gate=input_gate, normalize=bool(normalize), initial_state=initial_state,
              output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size,
              eps=float(eps))


def _check_initial_state(state, sizes: tuple[int, int, int, int], device: torch.device) -> None:
    """``state`` is None or a tuple ``(C [N,H,K,V], n [N,H,K], m [N,H])`` of float tensors."""
    if state is None:
        return
    if not isinstance(state, tuple):
        raise TypeError(f"initial_state: expected a tuple (C, n, m) of tensors, got {type(state).__name__}")
    if len(state) != 3:
        raise ValueError(f"initial_state: expected a tuple (C, n, m) of 3 tensors, got {len(state)} items")
    N, H, K, V = sizes
    parts = (("C", "N H K V", (N, H, K, V)), ("n", "N H K", (N, H, K)), ("m", "N H", (N, H)))
    for idx, (x, (name, symbols, shape)) in enumerate(zip(state, parts)):
        checks.check_state(x, f"initial_state[{idx}] ({name})", symbols, shape, device)
