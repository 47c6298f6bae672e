"""pLSTM-2D layers (Poeppel et al. 2025; MATH.md 8.2): a grid mixer and a P-then-D block.

Gates are per head, linear maps of the input with the paper's initial biases
(MATH.md 8.2, "init"): source, mark and direct gates ``sigmoid(b + W x)`` with
b = -4, -4, -6; transitions ``tanh(5 (b + W x))`` with b = 1. The gate weights start
at zero (every gate starts input-independent at its bias) and, like the biases,
are kept by :func:`linscan.nn.init_weights`.
"""

from __future__ import annotations

import torch
from torch import nn

from ...ops.grid.plstm import plstm2d
from ..init import keep_init
from ..mlp import SwiGLU
from ..norms import RMSNorm

# pre-activation gates per head and their initial biases
GATES = {
    "P": {"S": -4.0, "T": 1.0, "M": -4.0, "E": -6.0, "O": 0.0},        # O: the orientation gate
    "D": {"S_r": -4.0, "S_d": -4.0, "T_rl": 1.0, "T_ru": 1.0, "T_du": 1.0,
          "M_l": -4.0, "M_u": -4.0, "E": -6.0},
}
TRANSITION_SCALE = 5.0          # T = tanh(5 (b + W x))


class PLSTM2D(nn.Module):
    """pLSTM on a grid: ``x [B, X, Y, d_model] -> [B, X, Y, d_model]``.

    q, k, v are per-head projections of x; the gates (per head and cell) are:

    - ``mode="P"``: S, M, E = sigmoid, T = tanh(5 .), and an orientation gate o = sigmoid (bias
      0) that splits them between the two outgoing edges, as the paper's vision layer does:
      S^r = o S, S^d = 1 - S^r;  T^rl = T^ru = o T, T^dl = T^du = 1 - o T;  M^l = M^u = M.
      The split is exact (sum_out |T| = 1) iff 0 <= o T <= 1; where o T < 0 the op's P-mode
      normaliser (``plstm2d(normalize=True)``) rescales it back to the bound.
    - ``mode="D"``: separate S^r, S^d, M^l, M^u (sigmoid), T^rl, T^ru, T^du (tanh(5 .), so
      |T| < 1), T^dl = 0 (the chirality-L multitree).

    The output of each head is RMS-normalised over V, then projected back to d_model.

    Args:
        d_model: model width; n_heads: H.
        head_dim: K per head (default d_model // H); value_dim: V per head (default head_dim).
        mode: ``"P"`` or ``"D"``.
        orientation: the corner the sweep starts from (0..3, see :func:`plstm2d`).
        backend: the op's backend (``"auto"``).
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None,
                 value_dim: int | None = None, mode: str = "P", orientation: int = 0,
                 backend: str = "auto"):
        super().__init__()
        if mode not in GATES:
            raise ValueError(f"mode: expected 'P' or 'D', got {mode!r}")
        self.n_heads, self.head_dim = n_heads, head_dim or max(1, d_model // n_heads)
        self.value_dim = value_dim or self.head_dim
        self.mode, self.orientation, self.backend = mode, orientation, backend
        H, K, V = n_heads, self.head_dim, self.value_dim
        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        self.k_proj = nn.Linear(d_model, H * K, bias=False)
        self.v_proj = nn.Linear(d_model, H * V, bias=False)
        biases = torch.tensor(list(GATES[mode].values()))
        self.gate_proj = nn.Linear(d_model, len(biases) * H)            # output (G H), gate-major
        with torch.no_grad():
            self.gate_proj.weight.zero_()
            self.gate_proj.bias.copy_(biases.repeat_interleave(H))
        keep_init(self.gate_proj)
        self.norm = RMSNorm(V)
        self.o_proj = nn.Linear(H * V, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, X, Y, d_model]`` -> ``[B, X, Y, d_model]``."""
        B, X, Y, _ = x.shape
        H, K, V = self.n_heads, self.head_dim, self.value_dim
        q = self.q_proj(x).view(B, X, Y, H, K)
        k = self.k_proj(x).view(B, X, Y, H, K)
        v = self.v_proj(x).view(B, X, Y, H, V)
        pre = self.gate_proj(x).to(torch.promote_types(x.dtype, torch.float32))  # gates in >= float32
        gates = dict(zip(GATES[self.mode], pre.view(B, X, Y, -1, H).unbind(3)))  # name -> (B, X, Y, H)
        S, T, M, E = (p_gates if self.mode == "P" else d_gates)(gates)
        o = plstm2d(q, k, v, S, T, M, E, mode=self.mode, orientation=self.orientation,
                    backend=self.backend)                                # (B, X, Y, H, V)
        return self.o_proj(self.norm(o).reshape(B, X, Y, H * V))


def p_gates(pre: dict[str, torch.Tensor]):
    """P-mode gates (S ``[.., 2]``, T ``[.., 4]``, M ``[.., 2]``, E) from pre-activations ``[B, X, Y, H]``."""
    o = torch.sigmoid(pre["O"])
    s_r = o * torch.sigmoid(pre["S"])
    t = o * torch.tanh(TRANSITION_SCALE * pre["T"])
    m = torch.sigmoid(pre["M"])
    S = torch.stack((s_r, 1 - s_r), dim=-1)
    T = torch.stack((t, t, 1 - t, 1 - t), dim=-1)                      # (T^rl, T^ru, T^dl, T^du)
    return S, T, torch.stack((m, m), dim=-1), torch.sigmoid(pre["E"])


def d_gates(pre: dict[str, torch.Tensor]):
    """D-mode gates from pre-activations ``[B, X, Y, H]``; T^dl = 0."""
    S = torch.sigmoid(torch.stack((pre["S_r"], pre["S_d"]), dim=-1))
    t_rl, t_ru, t_du = (torch.tanh(TRANSITION_SCALE * pre[n]) for n in ("T_rl", "T_ru", "T_du"))
    T = torch.stack((t_rl, t_ru, torch.zeros_like(t_rl), t_du), dim=-1)
    M = torch.sigmoid(torch.stack((pre["M_l"], pre["M_u"]), dim=-1))
    return S, T, M, torch.sigmoid(pre["E"])


class PLSTM2DBlock(nn.Module):
    """A P-mode and a D-mode pLSTM layer, then a SwiGLU, each pre-normed and residual
    (pLSTM's vision model alternates P and D layers): ``[B, X, Y, d_model]`` -> same shape.

        x = x + P(norm(x));   x = x + D(norm(x));   x = x + MLP(norm(x))

    Args:
        d_model, n_heads, head_dim, value_dim, orientation, backend: as :class:`PLSTM2D`
            (both layers sweep from the same corner).
        mlp: add the SwiGLU (default True).
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None,
                 value_dim: int | None = None, orientation: int = 0, mlp: bool = True,
                 backend: str = "auto"):
        super().__init__()
        layer = dict(head_dim=head_dim, value_dim=value_dim, orientation=orientation, backend=backend)
        self.norms = nn.ModuleList(RMSNorm(d_model) for _ in range(3 if mlp else 2))
        self.mixers = nn.ModuleList(PLSTM2D(d_model, n_heads, mode=m, **layer) for m in "PD")
        self.mlp = SwiGLU(d_model) if mlp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, X, Y, d_model]`` -> ``[B, X, Y, d_model]``."""
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norms[2](x))
        return x
