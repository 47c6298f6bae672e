"""mLSTM layer (xLSTM, Beck et al. 2024): matrix memory with exponential or sigmoid input gates."""

from __future__ import annotations

import torch
from torch import nn

from ...ops import mlstm_scan
from .. import sequence
from ..conv import ShortConv
from ..init import keep_init
from ..norms import GatedRMSNorm


class MLSTM(nn.Module):
    """``C_t = f_t C_{t-1} + i_t k_t v_t^T``, ``n_t = f_t n_{t-1} + i_t k_t``, ``h_t = C_t^T q^ / |q^ . n_t|``.

    As in the xLSTM mLSTM block, q and k come from a causal short convolution (kernel 4,
    swish) of the input and v from the input itself; the per-head gates i, f are linear
    in x with zero-initialised weights, input-gate bias ~ N(0, 0.1) and forget-gate bias
    linspace(3, 6) over heads (sigmoid(3..6) = 0.95..0.998: long memory at the start).
    Output ``W_o(RMSNorm_h(h) * swish(W_z x))`` (multi-head norm and output gate).

    Args:
        d_model: model width; n_heads: H; head_dim: K per head (default d_model // H).
        layer_idx: position in the stack (unused, part of the mixer interface).
        expand_v: V / K.
        input_gate: ``"exp"`` (mLSTMexp, stabilised by the max-state m) or ``"sigmoid"``.
        normalize: divide by the normaliser n (see :func:`linscan.ops.mlstm_scan`).
        use_short_conv: the conv on the q/k path (False: q, k straight from x).
        conv_size: its kernel.
        eps: normaliser epsilon.

    State: ``{"C": [N, H, K, V], "n": [N, H, K], "m": [N, H]}`` float32, plus
    ``"conv": [N, d_model, conv_size - 1]`` with ``use_short_conv``.
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 expand_v: float = 1.0, input_gate: str = "exp", normalize: bool = True,
                 use_short_conv: bool = True, conv_size: int = 4, eps: float = 1e-6):
        super().__init__()
        if input_gate not in ("exp", "sigmoid"):
            raise ValueError(f"input_gate: expected 'exp' or 'sigmoid', got {input_gate!r}")
        self.n_heads, self.head_dim = n_heads, head_dim or d_model // n_heads
        self.value_dim, self.layer_idx = int(self.head_dim * expand_v), layer_idx
        self.input_gate, self.normalize, self.eps = input_gate, normalize, eps
        H, K, V = n_heads, self.head_dim, self.value_dim
        self.conv = ShortConv(d_model, conv_size, activation="silu") if use_short_conv else None
        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        self.k_proj = nn.Linear(d_model, H * K, bias=False)
        self.v_proj = nn.Linear(d_model, H * V, bias=False)
        self.i_proj = nn.Linear(d_model, H)
        self.f_proj = nn.Linear(d_model, H)
        self.z_proj = nn.Linear(d_model, H * V, bias=False)
        self.norm = GatedRMSNorm(V, activation="silu")
        self.o_proj = nn.Linear(H * V, d_model, bias=False)
        with torch.no_grad():
            nn.init.zeros_(self.i_proj.weight)
            nn.init.normal_(self.i_proj.bias, std=0.1)
            nn.init.zeros_(self.f_proj.weight)
            self.f_proj.bias.copy_(torch.linspace(3.0, 6.0, H))
        keep_init(self.i_proj, self.f_proj)

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], new_state)``; see the class docstring."""
        sequence.refuse_state(self, state, cu_seqlens)
        B, T, _ = x.shape
        H, K, V = self.n_heads, self.head_dim, self.value_dim
        new_state = {}
        xc = x
        if self.conv is not None:
            xc, new_state["conv"] = self.conv(x, None if state is None else state["conv"], cu_seqlens)
        q = self.q_proj(xc).view(B, T, H, K)  # (B, T, H, K)
        k = self.k_proj(xc).view(B, T, H, K)  # (B, T, H, K)
        v = self.v_proj(x).view(B, T, H, V)  # (B, T, H, V)
        i, f = self.i_proj(x), self.f_proj(x)  # (B, T, H) each
        init = None if state is None else (state["C"], state["n"], state["m"])
        scan = sequence.op(self, "mlstm_scan", mlstm_scan)  # linscan.parallel.mlstm_scan under SP
        h, (C, n, m) = scan(q, k, v, i, f, input_gate=self.input_gate, normalize=self.normalize,
                            eps=self.eps, initial_state=init, output_final_state=True,
                            cu_seqlens=cu_seqlens)
        h = self.norm(h, self.z_proj(x).view(B, T, H, V))  # (B, T, H, V)
        new_state.update(C=C, n=n, m=m)
        return self.o_proj(h.reshape(B, T, H * V)), new_state
