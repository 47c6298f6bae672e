"""DeltaNet (Yang et al. 2024), Gated DeltaNet (Yang et al. 2025), DeltaProduct (Siems et al. 2025)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import delta_scan
from .. import sequence
from ..conv import ShortConvs
from ..norms import GatedRMSNorm, RMSNorm


class DeltaNet(nn.Module):
    """The delta rule ``S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, R steps per token.

    q, k, v: linear maps, each through a causal short conv (kernel 4) and SiLU; q, k
    L2-normalised per head. ``beta = sigmoid(W_b x)``, or ``2 sigmoid(W_b x)`` with
    ``allow_neg_eigval`` (transition eigenvalues in [-1, 1]). Gated: Mamba-2 decay
    ``log a_t = -exp(A_log) softplus(W_a x_t + dt_bias)`` with A ~ U(0, 16) and dt in
    [1e-3, 0.1] log-uniform at initialisation. ``n_householder`` R > 1 (DeltaProduct) gives
    every token R keys, values and betas. Output ``W_o(RMSNorm_h(o))``, or with
    ``use_output_gate`` ``W_o(RMSNorm_h(o) * swish(W_g x))``.

    Args:
        d_model: model width; n_heads: H; head_dim: K per head (default d_model // H).
        layer_idx: position in the stack (unused, part of the mixer interface).
        expand_v: V / K.
        gated: use the decay a_t (Gated DeltaNet).
        n_householder: R Householder steps per token (1: DeltaNet).
        allow_neg_eigval: beta in [0, 2] instead of [0, 1].
        use_short_conv: the convs on q, k, v (False: SiLU on q, k only).
        conv_size: their kernel.
        use_output_gate: the swish output gate (default: ``gated``).

    State: ``{"S": [N, H, K, V]}`` float32, plus with ``use_short_conv``
    ``"conv_q": [N, H*K, W-1]``, ``"conv_k": [N, R*H*K, W-1]``, ``"conv_v": [N, R*H*V, W-1]``.
    ``A_log`` and ``dt_bias`` carry ``_no_weight_decay = True``.
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 expand_v: float = 1.0, gated: bool = False, n_householder: int = 1,
                 allow_neg_eigval: bool = False, use_short_conv: bool = True, conv_size: int = 4,
                 use_output_gate: bool | None = None):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim or d_model // n_heads
        self.value_dim, self.layer_idx = int(self.head_dim * expand_v), layer_idx
        self.gated, self.n_householder, self.allow_neg_eigval = gated, n_householder, allow_neg_eigval
        H, K, V, R = n_heads, self.head_dim, self.value_dim, n_householder
        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        self.k_proj = nn.Linear(d_model, R * H * K, bias=False)
        self.v_proj = nn.Linear(d_model, R * H * V, bias=False)
        self.b_proj = nn.Linear(d_model, R * H, bias=False)
        self.convs = None
        if use_short_conv:  # SiLU
            self.convs = ShortConvs({"q": H * K, "k": R * H * K, "v": R * H * V}, conv_size)
        if gated:
            self.a_proj = nn.Linear(d_model, H, bias=False)
            self.A_log = nn.Parameter(torch.empty(H).uniform_(0, 16).clamp_min(1e-4).log())
            dt = torch.exp(torch.empty(H).uniform_(math.log(1e-3), math.log(0.1))).clamp_min(1e-4)
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        self.use_output_gate = gated if use_output_gate is None else use_output_gate
        if self.use_output_gate:
            self.g_proj = nn.Linear(d_model, H * V, bias=False)
            self.norm = GatedRMSNorm(V, activation="silu")
        else:
            self.norm = RMSNorm(V)
        self.o_proj = nn.Linear(H * V, d_model, bias=False)

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], new_state)``; see the class docstring."""
        sequence.refuse_state(self, state, cu_seqlens)
        B, T, _ = x.shape
        H, K, V, R = self.n_heads, self.head_dim, self.value_dim, self.n_householder
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        new_state = {}
        if self.convs is not None:
            convolved, new_state = self.convs({"q": q, "k": k, "v": v}, state, cu_seqlens)
            q, k, v = convolved["q"], convolved["k"], convolved["v"]
        else:
            q, k = F.silu(q), F.silu(k)
        q = F.normalize(q.view(B, T, H, K), dim=-1)  # (B, T, H, K)
        f32 = torch.promote_types(x.dtype, torch.float32)  # gates in >= float32
        beta = torch.sigmoid(self.b_proj(x).to(f32)) * (2 if self.allow_neg_eigval else 1)  # (B, T, R * H)
        if R == 1:
            k, v = k.view(B, T, H, K), v.view(B, T, H, V)  # (B, T, H, K), (B, T, H, V)
        else:
            k, v = k.view(B, T, R, H, K), v.view(B, T, R, H, V)  # (B, T, R, H, K), (B, T, R, H, V)
            beta = beta.view(B, T, R, H)  # (B, T, R, H)
        k = F.normalize(k, dim=-1)
        g = None
        if self.gated:
            dt = F.softplus(self.a_proj(x).to(f32) + self.dt_bias.to(f32))  # (B, T, H)
            g = -self.A_log.to(f32).exp() * dt  # (B, T, H)
        scan = sequence.op(self, "delta_scan", delta_scan)  # linscan.parallel.delta_scan under SP
        o, S = scan(q, k, v, beta, g, initial_state=None if state is None else state["S"],
                    output_final_state=True, cu_seqlens=cu_seqlens)
        if self.use_output_gate:
            o = self.norm(o, self.g_proj(x).view(B, T, H, V))  # (B, T, H, V)
        else:
            o = self.norm(o)
        new_state["S"] = S
        return self.o_proj(o.reshape(B, T, H * V)), new_state


class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet: :class:`DeltaNet` with the gate, the output gate and the paper's ``expand_v = 2``."""

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 expand_v: float = 2.0, allow_neg_eigval: bool = False, use_short_conv: bool = True,
                 conv_size: int = 4):
        super().__init__(d_model, n_heads, head_dim=head_dim, layer_idx=layer_idx, expand_v=expand_v,
                         gated=True, allow_neg_eigval=allow_neg_eigval, use_short_conv=use_short_conv,
                         conv_size=conv_size)


class DeltaProduct(DeltaNet):
    """DeltaProduct: :class:`DeltaNet` with R = ``n_householder`` Householder steps per token."""

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 expand_v: float = 1.0, n_householder: int = 2, gated: bool = False,
                 allow_neg_eigval: bool = False, use_short_conv: bool = True, conv_size: int = 4):
        super().__init__(d_model, n_heads, head_dim=head_dim, layer_idx=layer_idx, expand_v=expand_v,
                         gated=gated, n_householder=n_householder, allow_neg_eigval=allow_neg_eigval,
                         use_short_conv=use_short_conv, conv_size=conv_size)
