"""Gated Linear Attention (Yang et al. 2024): data-dependent diagonal decay from a low-rank gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import decay_scan
from .. import sequence
from ..conv import ShortConvs
from ..norms import GatedRMSNorm


class GLA(nn.Module):
    """``S_t = Diag(alpha_t) S_{t-1} + k_t v_t^T``, ``log alpha_t = logsigmoid(W_2 W_1 x_t + b) / 16``.

    The temperature 16 (the paper's tau) keeps every decay close to 1 (about 0.96 at
    initialisation, b = 0). Output ``W_o(RMSNorm_h(o) * swish(W_r x))``.

    Args:
        d_model: model width; n_heads: H.
        head_dim: K per head; default d_model // (2 H) (the paper's expand_k = 0.5).
        layer_idx: position in the stack (unused, part of the mixer interface).
        expand_v: V / K (default 2: value width d_model, expand_v = 1 in the paper's terms).
        gate_rank: rank of the gate projection (16).
        gate_normalizer: tau (16).
        use_short_conv: causal depthwise convs (kernel ``conv_size``, SiLU) on q, k, v, as FLA's
            GLA offers; they give the layer a cheap previous-token path (off: the paper's layer).

    State: ``{"S": [N, H, K, V]}`` float32, plus ``conv_q``, ``conv_k``, ``conv_v``
    ``[N, width, conv_size - 1]`` with ``use_short_conv``.
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 expand_v: float = 2.0, gate_rank: int = 16, gate_normalizer: float = 16.0,
                 use_short_conv: bool = False, conv_size: int = 4):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim or max(1, d_model // (2 * n_heads))
        self.value_dim, self.layer_idx = int(self.head_dim * expand_v), layer_idx
        self.gate_normalizer = gate_normalizer
        H, K, V = n_heads, self.head_dim, self.value_dim
        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        self.k_proj = nn.Linear(d_model, H * K, bias=False)
        self.v_proj = nn.Linear(d_model, H * V, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(d_model, gate_rank, bias=False), nn.Linear(gate_rank, H * K))
        nn.init.zeros_(self.gk_proj[1].bias)
        self.g_proj = nn.Linear(d_model, H * V, bias=False)
        self.norm = GatedRMSNorm(V, activation="silu")
        self.o_proj = nn.Linear(H * V, d_model, bias=False)
        self.convs = ShortConvs({"q": H * K, "k": H * K, "v": H * V}, conv_size) if use_short_conv else None

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], new_state)``; see the class docstring."""
        sequence.refuse_state(self, state, cu_seqlens)
        B, T, _ = x.shape
        H, K, V = self.n_heads, self.head_dim, self.value_dim
        q, k, v, new_state = self.q_proj(x), self.k_proj(x), self.v_proj(x), {}
        if self.convs is not None:
            convolved, new_state = self.convs({"q": q, "k": k, "v": v}, state, cu_seqlens)
            q, k, v = convolved["q"], convolved["k"], convolved["v"]
        q, k, v = q.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, V)  # (B, T, H, K | V)
        gate = self.gk_proj(x).to(torch.promote_types(x.dtype, torch.float32))  # gates in >= float32
        g = F.logsigmoid(gate).view(B, T, H, K) / self.gate_normalizer  # (B, T, H, K)
        scan = sequence.op(self, "decay_scan", decay_scan)  # linscan.parallel.decay_scan under SP
        o, S = scan(q, k, v, g, initial_state=None if state is None else state["S"],
                    output_final_state=True, cu_seqlens=cu_seqlens)
        o = self.norm(o, self.g_proj(x).view(B, T, H, V))  # (B, T, H, V)
        return self.o_proj(o.reshape(B, T, H * V)), {"S": S, **new_state}
