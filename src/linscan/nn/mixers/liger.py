"""Liger (Lan et al. 2025): an attention layer's own q, k, v, o projections run as a gated linear
recurrence, optionally mixed with sliding-window softmax attention (Liger Attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...ops import decay_scan, delta_scan
from .. import sequence
from .attention import Attention

RECURRENCES = ("gla", "gated_deltanet", "hgrn2")


class Liger(Attention):
    """The parameters of :class:`Attention` (same names and shapes: an attention layer's state
    dict loads as is), no others; the gate comes from the key projection. MATH.md section 9.

    With q, k, v the projections (k before RoPE; key/value heads repeated to the query heads
    under grouped-query attention), per head, in >= float32:

        gla:             g_t = logsigmoid(k_t) / 16 [K];  k~ = softmax(k);  q~ = softmax(q)
                         S_t = Diag(exp g_t) S_{t-1} + k~_t v_t^T
        hgrn2:           g_t = logsigmoid(k_t) [K] (no /16);  k~ = 1 - sigmoid(k) = 1 - exp(g_t);
                         q~ = softmax(q);  the same recurrence
        gated_deltanet:  (ours: the paper has no delta-rule recipe) g_t = logsigmoid(mean_K k_t) / 16
                         (a scalar); k~ = softmax(k) / ||softmax(k)||_2 (unit keys, as the delta rule
                         needs); q~ = softmax(q); beta = 1:
                         S_t = exp(g_t) (I - k~_t k~_t^T) S_{t-1} + k~_t v_t^T
        o^rec_t = S_t^T q~_t                     (scale 1, no normaliser, no output norm or gate)

    softmax and sigmoid act over the head dim. Without a window the output is ``o_proj(o^rec)``
    (Liger). With ``window = w`` it is ``o_proj((1 - r) o^SWA + r o^rec)`` (Liger Attention),
    ``o^SWA`` the layer's causal softmax attention (RoPE, scale 1/sqrt(D)) over the keys at
    positions (t - w, t] and ``r = recurrent_weight``: the paper's w = 64, r = 0.5.

    Args:
        d_model, n_heads, head_dim, layer_idx, rope_base, qkv_bias, n_kv_heads: as :class:`Attention`.
        recurrence: ``"gla"``, ``"gated_deltanet"`` or ``"hgrn2"`` (above).
        window: the softmax branch's window (None: no softmax branch, pure Liger).
        recurrent_weight: r in [0, 1] (0 with a window: exactly the sliding-window attention).
        gate_normalizer: the 16 of the gla and gated_deltanet gates.

    State: ``{"S": [N, H, D, D]}`` float32 (float64 for float64 inputs), plus with a window the
    softmax branch's cache ``"k", "v" [N, L, Hkv, D], "pos" [N]`` of the last ``w - 1`` tokens
    (:class:`Attention`'s layout): constant in the context length either way.
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 recurrence: str = "gla", window: int | None = 64, recurrent_weight: float = 0.5,
                 gate_normalizer: float = 16.0, rope_base: float = 10000.0, qkv_bias: bool = False,
                 n_kv_heads: int | None = None):
        super().__init__(d_model, n_heads, head_dim=head_dim, layer_idx=layer_idx, window=window,
                         rope_base=rope_base, qkv_bias=qkv_bias, n_kv_heads=n_kv_heads)
        if recurrence not in RECURRENCES:
            raise ValueError(f"recurrence: expected one of {RECURRENCES}, got {recurrence!r}")
        if isinstance(recurrent_weight, bool) or not isinstance(recurrent_weight, (int, float)) \
                or not 0 <= recurrent_weight <= 1:
            raise ValueError(f"recurrent_weight: expected a number in [0, 1], got {recurrent_weight!r}")
        if isinstance(gate_normalizer, bool) or not isinstance(gate_normalizer, (int, float)) or not gate_normalizer > 0:
            raise ValueError(f"gate_normalizer: expected a positive number, got {gate_normalizer!r}")
        self.recurrence, self.recurrent_weight = recurrence, float(recurrent_weight)
        self.gate_normalizer = float(gate_normalizer)

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], new_state)``; see the class docstring."""
        sequence.refuse_state(self, state, cu_seqlens)
        B, T, _ = x.shape
        q, k, v = self.project(x)  # (B, T, H | Hkv, D)
        o, S = self.recurrent(q, k, v, None if state is None else state["S"], cu_seqlens)  # (B, T, H, D)
        new_state = {"S": S}
        if self.window is not None:
            cache = None if state is None else {name: state[name] for name in ("k", "v", "pos")}
            o_swa, cache = self.attend(q, k, v, cache, cu_seqlens)  # (B, T, H, D)
            r = self.recurrent_weight
            o = (1 - r) * o_swa + r * o.to(o_swa.dtype)
            new_state.update(cache or {})
        return self.o_proj(o.to(x.dtype).reshape(B, T, -1)), new_state

    def recurrent(self, q, k, v, initial_state, cu_seqlens):
        """The linear branch: q ``[B, T, H, D]``, k, v ``[B, T, Hkv, D]`` (before RoPE)
        -> ``(o^rec [B, T, H, D] in >= float32, S [N, H, D, D])``."""
        dtype = torch.promote_types(q.dtype, torch.float32)
        k, v = self._repeat_kv(k, v)  # (B, T, H, D)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        q_feat = q.softmax(-1)
        common = dict(scale=1.0, initial_state=initial_state, output_final_state=True, cu_seqlens=cu_seqlens)
        if self.recurrence == "gated_deltanet":
            g = F.logsigmoid(k.mean(-1)) / self.gate_normalizer  # (B, T, H)
            k_feat = F.normalize(k.softmax(-1), dim=-1)
            beta = torch.ones_like(g)
            return sequence.op(self, "delta_scan", delta_scan)(q_feat, k_feat, v, beta, g, **common)
        if self.recurrence == "hgrn2":
            g, k_feat = F.logsigmoid(k), torch.sigmoid(-k)  # 1 - sigmoid(k), accurate for large k
        else:
            g, k_feat = F.logsigmoid(k) / self.gate_normalizer, k.softmax(-1)
        return sequence.op(self, "decay_scan", decay_scan)(q_feat, k_feat, v, g, **common)
