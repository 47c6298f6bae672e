"""One token of the mLSTM recurrence: the decode step and the body of the reference loop.

Both gates are handled in log space, with lf = logsigmoid(f~) and li = i~ (exp gate)
or li = logsigmoid(i~) (sigmoid gate). The state (C, n, m) is stored stabilised:
the true, unbounded memory is C e^m and n e^m.

    m_t = max(lf_t + m_{t-1}, li_t)           exp gate; the sigmoid gate keeps m = 0
    C_t = e^{lf_t + m_{t-1} - m_t} C_{t-1} + e^{li_t - m_t} k_t v_t^T
    n_t = e^{lf_t + m_{t-1} - m_t} n_{t-1} + e^{li_t - m_t} k_t
    h_t = C_t^T q_t / (max(|q_t . n_t|, e^{-m_t}) + eps)      normalize=True
    h_t = e^{m_t} C_t^T q_t                                    normalize=False

(q already scaled by 1/sqrt(K)). With m = 0 the sigmoid gate reads max(|q . n|, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GATES = ("exp", "sigmoid")
State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def check_input_gate(input_gate) -> bool:
    """Validate ``input_gate``; True when the exp gate (and so the max-state m) is in use."""
    if input_gate not in GATES:
        raise ValueError(f"input_gate: expected one of {list(GATES)}, got {input_gate!r}")
    return input_gate == "exp"


def log_gates(i: torch.Tensor, f: torch.Tensor, input_gate: str, dtype: torch.dtype):
    """Log input and forget gates ``(li, lf)`` in ``dtype`` from the raw pre-activations."""
    i, f = i.to(dtype), f.to(dtype)
    li = i if check_input_gate(input_gate) else F.logsigmoid(i)
    return li, F.logsigmoid(f)


def start_state(initial_state: State | None, shape: tuple[int, int, int, int], *, stabilise: bool,
                dtype: torch.dtype, device: torch.device) -> State:
    """The state before the first token, in ``dtype``: zeros, or ``initial_state``.

    ``shape`` is ``(N, H, K, V)``. Without the max-state (sigmoid gate) a given m is
    folded into C and n (the true memory is C e^m) and m restarts at zero.
    """
    N, H, K, V = shape
    if initial_state is None:
        return (torch.zeros(N, H, K, V, dtype=dtype, device=device),
                torch.zeros(N, H, K, dtype=dtype, device=device),
                torch.zeros(N, H, dtype=dtype, device=device))
    C, n, m = (x.to(dtype) for x in initial_state)
    if not stabilise:
        scale = m.exp()
        C, n, m = C * scale[..., None, None], n * scale[..., None], torch.zeros_like(m)
    return C, n, m


def readout(num: torch.Tensor, qn: torch.Tensor, m: torch.Tensor, *, normalize: bool, eps: float):
    """h from the stabilised numerator ``C^T q`` [..., V], normaliser ``q . n`` [...] and m [...]."""
    scale = (torch.maximum(qn.abs(), (-m).exp()) + eps).reciprocal() if normalize else m.exp()
    return num * scale[..., None].expand_as(num)        # expanded: faster than broadcasting on CPU


def mlstm_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, li: torch.Tensor, lf: torch.Tensor,
               state: State, *, stabilise: bool, normalize: bool, eps: float) -> tuple[torch.Tensor, State]:
    """Advance ``state`` by one token.

    Args:
        q (scaled), k: ``[B, H, K]``; v: ``[B, H, V]``; li, lf: log gates ``[B, H]``.
        state: ``(C [B, H, K, V], n [B, H, K], m [B, H])``.
        stabilise: carry the max-state m (exp gate); otherwise m stays zero.
    Returns:
        h ``[B, H, V]`` and the new state.
    """
    C, n, m = state
    if stabilise:
        m_new = torch.maximum(lf + m, li)
        forget, write = (lf + m - m_new).exp(), (li - m_new).exp()
    else:
        m_new, forget, write = m, lf.exp(), li.exp()
    C = forget[..., None, None] * C + write[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = forget[..., None] * n + write[..., None] * k
    num = torch.einsum("bhk,bhkv->bhv", q, C)
    qn = torch.einsum("bhk,bhk->bh", q, n)
    return readout(num, qn, m_new, normalize=normalize, eps=eps), (C, n, m_new)
