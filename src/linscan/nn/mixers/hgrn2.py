"""HGRN-2 (Qin et al. 2024): gated linear RNN with state expansion, diagonal forget gate, key = 1 - f."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import decay_scan
from .. import sequence
from ..init import keep_init
from ..norms import GatedRMSNorm


class HGRN2(nn.Module):
    """``S_t = Diag(f_t) S_{t-1} + (1 - f_t) i_t^T``, ``o_t = S_t^T q_t / sqrt(K)``, ``q_t = silu(W_q x_t)``.

    ``f_t = lb + (1 - lb) sigmoid(W_f x_t + b_f)`` with lower bound ``lb`` (HGRN: deeper
    layers get a higher bound, so they keep more memory). The input gate is tied to
    the forget gate (``1 - f`` is the key) and the output is ``W_o(RMSNorm_h(o) * swish(W_g x))``.
    ``b_f`` is initialised so that f starts in [0.9, 0.999] (log-uniform in 1 - f, as
    Griffin's RG-LRU): decay close to 1 from the first step.

    Args:
        d_model: model width; n_heads: H; head_dim: K per head (default d_model // H;
            the paper's expand_ratio).
        layer_idx: position in the stack (unused unless the caller derives ``lower_bound`` from it).
        expand_v: V / K (1: value width d_model).
        lower_bound: lb in [0, 1).

    State: ``{"S": [N, H, K, V]}`` float32.
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 expand_v: float = 1.0, lower_bound: float = 0.0):
        super().__init__()
        if not 0 <= lower_bound < 1:
            raise ValueError(f"lower_bound: expected a value in [0, 1), got {lower_bound}")
        self.n_heads, self.head_dim = n_heads, head_dim or d_model // n_heads
        self.value_dim = int(self.head_dim * expand_v)
        self.layer_idx, self.lower_bound = layer_idx, lower_bound
        H, K, V = n_heads, self.head_dim, self.value_dim
        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        self.f_proj = nn.Linear(d_model, H * K)
        self.i_proj = nn.Linear(d_model, H * V, bias=False)
        self.g_proj = nn.Linear(d_model, H * V, bias=False)
        self.norm = GatedRMSNorm(V, activation="silu")
        self.o_proj = nn.Linear(H * V, d_model, bias=False)
        with torch.no_grad():
            one_minus_f = torch.exp(torch.empty(H * K).uniform_(math.log(1e-3), math.log(0.1)))
            self.f_proj.bias.copy_(torch.log1p(-one_minus_f) - torch.log(one_minus_f))  # logit(f)
        keep_init(self.f_proj.bias)

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], new_state)``; see the class docstring."""
        sequence.refuse_state(self, state, cu_seqlens)
        B, T, _ = x.shape
        H, K, V, lb = self.n_heads, self.head_dim, self.value_dim, self.lower_bound
        q = F.silu(self.q_proj(x)).view(B, T, H, K)  # (B, T, H, K)
        f32 = torch.promote_types(x.dtype, torch.float32)  # gates in >= float32
        z = self.f_proj(x).to(f32).view(B, T, H, K)  # (B, T, H, K) forget-gate logits
        k = ((1 - lb) * torch.sigmoid(-z)).to(q.dtype)  # 1 - f, exact even when f rounds to 1
        # log f = logsigmoid(z) for lb = 0; the clamp removes a rounding excess above 0
        g = F.logsigmoid(z) if lb == 0 else torch.log(lb + (1 - lb) * torch.sigmoid(z)).clamp(max=0)
        v = self.i_proj(x).view(B, T, H, V)  # (B, T, H, V)
        scan = sequence.op(self, "decay_scan", decay_scan)  # linscan.parallel.decay_scan under SP
        o, S = scan(q, k, v, g, initial_state=None if state is None else state["S"],
                    output_final_state=True, cu_seqlens=cu_seqlens)
        o = self.norm(o, self.g_proj(x).view(B, T, H, V))  # (B, T, H, V)
        return self.o_proj(o.reshape(B, T, H * V)), {"S": S}
