"""Lightning Attention (TransNormerLLM / Lightning Attention-2): constant per-head decay."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import decay_scan
from .. import sequence
from ..norms import GatedRMSNorm


def lightning_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi-style decay rates ``s_h = start^(h+1)``, ``start = 2^(-2^(-(log2 H - 3)))``, ``[H]`` float64."""
    start = 2.0 ** (-(2.0 ** -(math.log2(n_heads) - 3)))
    return torch.tensor([start ** (h + 1) for h in range(n_heads)], dtype=torch.float64)


class Lightning(nn.Module):
    """``S_t = e^{-s_h} S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t / sqrt(K)``, q, k = silu(W_{q,k} x).

    Output ``W_o(RMSNorm(o) * sigmoid(W_g x))`` (the norm spans all heads, as in
    TransNormerLLM; the sigmoid output gate as in MiniMax-01).

    Args:
        d_model: model width; n_heads: H; head_dim: K = V per head (default d_model // H).
        layer_idx: position in the stack; with ``n_layers`` it scales the slopes by
            ``1 - layer_idx / (n_layers - 1) + 1e-5`` (TransNormerLLM: deeper layers forget less).
        n_layers: depth of the stack, or None for the plain slopes of MATH.md (``g_h = -s_h``).

    State: ``{"S": [N, H, K, V]}`` float32.
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 n_layers: int | None = None):
        super().__init__()
        self.n_heads, self.head_dim, self.layer_idx = n_heads, head_dim or d_model // n_heads, layer_idx
        width = n_heads * self.head_dim
        slopes = lightning_slopes(n_heads)
        if n_layers is not None and n_layers > 1:
            slopes = slopes * (1 - layer_idx / (n_layers - 1) + 1e-5)
        self.register_buffer("log_decay", -slopes.float(), persistent=False)  # (H,)
        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.k_proj = nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)
        self.g_proj = nn.Linear(d_model, width, bias=False)
        self.norm = GatedRMSNorm(width, activation="sigmoid")
        self.o_proj = nn.Linear(width, d_model, bias=False)

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], new_state)``; see the class docstring."""
        sequence.refuse_state(self, state, cu_seqlens)
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        q = F.silu(self.q_proj(x)).view(B, T, H, D)  # (B, T, H, K)
        k = F.silu(self.k_proj(x)).view(B, T, H, D)  # (B, T, H, K)
        v = self.v_proj(x).view(B, T, H, D)  # (B, T, H, V)
        scan = sequence.op(self, "decay_scan", decay_scan)  # linscan.parallel.decay_scan under SP
        o, S = scan(q, k, v, self.log_decay, initial_state=None if state is None else state["S"],
                    output_final_state=True, cu_seqlens=cu_seqlens)
        o = self.norm(o.reshape(B, T, H * D), self.g_proj(x))  # (B, T, H * V)
        return self.o_proj(o), {"S": S}
