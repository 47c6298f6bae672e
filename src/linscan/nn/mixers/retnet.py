"""Retention (RetNet, Sun et al. 2023): fixed per-head decay, rotary positions, gated group norm."""

from __future__ import annotations

import torch
from torch import nn

from ...ops import decay_scan
from .. import sequence
from ..norms import GatedRMSNorm
from ..rotary import RotaryEmbedding, token_positions


class RetNet(nn.Module):
    """Multi-scale retention: ``S_t = gamma_h S_{t-1} + k_t v_t^T``, ``gamma_h = 1 - 2^(-5-h)``.

    q and k are rotated by their absolute position (RetNet's xPos-style Theta), k is
    scaled by 1/sqrt(K); the output is ``W_o(GroupNorm_h(o) * swish(W_g x))``, the group
    norm being an RMSNorm per head.

    Args:
        d_model: model width; n_heads: H; head_dim: K per head (default d_model // H).
        layer_idx: position in the stack (unused, part of the mixer interface).
        expand_v: V / K (the paper's value width is 2 d_model).
        rope_base: rotary wavelength base.

    State: ``{"S": [N, H, K, V] float32, "pos": [N] int64 tokens seen}``.
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 expand_v: float = 2.0, rope_base: float = 10000.0):
        super().__init__()
        self.n_heads, self.head_dim, self.layer_idx = n_heads, head_dim or d_model // n_heads, layer_idx
        self.value_dim = int(self.head_dim * expand_v)
        H, K, V = n_heads, self.head_dim, self.value_dim
        gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float64))
        self.register_buffer("log_decay", gamma.log().float(), persistent=False)  # (H,)
        self.rotary = RotaryEmbedding(K, base=rope_base)
        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        self.k_proj = nn.Linear(d_model, H * K, bias=False)
        self.v_proj = nn.Linear(d_model, H * V, bias=False)
        self.g_proj = nn.Linear(d_model, H * V, bias=False)
        self.norm = GatedRMSNorm(V, activation="silu")
        self.o_proj = nn.Linear(H * V, d_model, bias=False)

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], new_state)``; see the class docstring."""
        sequence.refuse_state(self, state, cu_seqlens)
        B, T, _ = x.shape
        H, K, V = self.n_heads, self.head_dim, self.value_dim
        offset = None if state is None else state["pos"]
        pos = token_positions(offset, B, T, cu_seqlens, device=x.device) + sequence.offset(self, T)  # (B, T)
        q = self.rotary(self.q_proj(x).view(B, T, H, K), pos)  # (B, T, H, K)
        k = self.rotary(self.k_proj(x).view(B, T, H, K), pos)  # (B, T, H, K)
        v = self.v_proj(x).view(B, T, H, V)  # (B, T, H, V)
        scan = sequence.op(self, "decay_scan", decay_scan)  # linscan.parallel.decay_scan under SP
        o, S = scan(q, k, v, self.log_decay, initial_state=None if state is None else state["S"],
                    output_final_state=True, cu_seqlens=cu_seqlens)
        o = self.norm(o, self.g_proj(x).view(B, T, H, V))  # (B, T, H, V)
        lengths = torch.full((B,), T, device=x.device) if cu_seqlens is None else cu_seqlens.diff()
        new_pos = lengths.long() if offset is None else offset + lengths
        return self.o_proj(o.reshape(B, T, H * V)), {"S": S, "pos": new_pos}
