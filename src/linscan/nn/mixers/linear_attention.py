"""Linear attention (Katharopoulos et al. 2020): a positive feature map instead of softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import decay_scan
from .. import sequence
from ..conv import ShortConvs

FEATURE_MAPS = {"elu": lambda x: F.elu(x) + 1, "relu": F.relu, "identity": lambda x: x}


class LinearAttention(nn.Module):
    """``o_t = S_t^T phi(q_t) / (phi(q_t) . z_t)``, ``S_t = S_{t-1} + phi(k_t) v_t^T``, ``z_t = sum phi(k)``.

    The normaliser z rides along as an extra value column of ones, so one
    ``decay_scan`` (g = None) computes numerator and denominator together.

    Args:
        d_model: model width; n_heads: H; head_dim: K = V per head (default d_model // H).
        layer_idx: position in the stack (unused, part of the mixer interface).
        feature_map: ``"elu"`` (elu + 1, the paper's), ``"relu"`` or ``"identity"``.
        normalize: divide by ``phi(q) . z`` (paper); otherwise return the raw readout.
        eps: added to the denominator.
        use_short_conv: causal depthwise convs (kernel ``conv_size``, SiLU) on q, k, v before the
            feature map: a cheap previous-token path (off: the paper's layer).

    State: ``{"S": [N, H, K, V + 1]}`` float32 (the last value column is z; with
    ``normalize=False`` it is ``[N, H, K, V]``), plus ``conv_q``, ``conv_k``, ``conv_v``
    ``[N, width, conv_size - 1]`` with ``use_short_conv``.
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 feature_map: str = "elu", normalize: bool = True, eps: float = 1e-6,
                 use_short_conv: bool = False, conv_size: int = 4):
        super().__init__()
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map: expected one of {sorted(FEATURE_MAPS)}, got {feature_map!r}")
        self.n_heads, self.head_dim = n_heads, head_dim or d_model // n_heads
        self.layer_idx, self.feature_map, self.normalize, self.eps = layer_idx, feature_map, normalize, eps
        width = n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.k_proj = nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)
        self.o_proj = nn.Linear(width, d_model, bias=False)
        self.convs = ShortConvs({"q": width, "k": width, "v": width}, conv_size) if use_short_conv else None

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], new_state)``; see the class docstring."""
        sequence.refuse_state(self, state, cu_seqlens)
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        phi = FEATURE_MAPS[self.feature_map]
        q, k, v, new_state = self.q_proj(x), self.k_proj(x), self.v_proj(x), {}
        if self.convs is not None:
            convolved, new_state = self.convs({"q": q, "k": k, "v": v}, state, cu_seqlens)
            q, k, v = convolved["q"], convolved["k"], convolved["v"]
        q, k = phi(q).view(B, T, H, D), phi(k).view(B, T, H, D)  # (B, T, H, K)
        v = v.view(B, T, H, D)  # (B, T, H, V)
        if self.normalize:
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, T, H, V + 1)
        scan = sequence.op(self, "decay_scan", decay_scan)  # linscan.parallel.decay_scan under SP
        o, S = scan(q, k, v, initial_state=None if state is None else state["S"],
                    output_final_state=True, cu_seqlens=cu_seqlens)
        if self.normalize:
            o = o[..., :D] / (o[..., D:] + self.eps)  # (B, T, H, V)
        return self.o_proj(o.reshape(B, T, H * D)), {"S": S, **new_state}
