"""Softmax attention (SDPA) with RoPE, an optional sliding window, a KV cache and packed sequences."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import sequence
from ..rotary import RotaryEmbedding, token_positions


class Attention(nn.Module):
    """Causal multi-head softmax attention; token t sees the keys at positions ``(t - window, t]``.

    Packed sequences (``cu_seqlens``) and cached keys are handled by one mask on the
    packed axis: a key is visible to a query of the same sequence (block-diagonal),
    at an earlier or equal position, inside the window.

    Args:
        d_model: model width; n_heads: H; head_dim: D per head (default d_model // H).
        layer_idx: position in the stack (unused, part of the mixer interface).
        window: sliding-window length (None: full causal attention).
        rope_base: rotary wavelength base.
        qkv_bias: biases on the q, k, v projections.
        n_kv_heads: key/value heads (grouped-query attention; None: H). Query head h reads
            key/value head ``h // (H / n_kv_heads)``, as Llama's ``repeat_kv``.
        lmul: compute the score and value products with L-Mul (``linscan.numerics.lmul_attention``:
            each product an integer add of float bit patterns, sums and softmax in float32) instead
            of SDPA: an emulation for accuracy studies (slow), on whole sequences without a cache.
        lmul_bits: L-Mul's mantissa bits (None: all 23 of float32); only with ``lmul``.

    State (the KV cache): ``{"k": [N, L, Hkv, D], "v": [N, L, Hkv, D], "pos": [N] int64}``.
    ``pos`` counts the tokens seen; row n holds the (rotated) keys and values of that
    sequence's last ``min(pos_n, window - 1)`` tokens (all ``pos_n`` without a window),
    left-aligned and zero-padded to the longest row.
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 window: int | None = None, rope_base: float = 10000.0, qkv_bias: bool = False,
                 n_kv_heads: int | None = None, lmul: bool = False, lmul_bits: int | None = None):
        super().__init__()
        if not isinstance(lmul, bool):
            raise ValueError(f"lmul: expected a bool, got {lmul!r}")
        if lmul_bits is not None and (isinstance(lmul_bits, bool) or not isinstance(lmul_bits, int)
                                      or not 1 <= lmul_bits <= 23):
            raise ValueError(f"lmul_bits: expected None or an int in 1..23, got {lmul_bits!r}")
        self.lmul, self.lmul_bits = lmul, lmul_bits
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window: expected None or an int >= 1, got {window!r}")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if isinstance(n_kv_heads, bool) or not isinstance(n_kv_heads, int) or n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads: expected a positive divisor of n_heads = {n_heads}, got {n_kv_heads!r}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim or d_model // n_heads
        self.layer_idx, self.window = layer_idx, window
        width, kv_width = n_heads * self.head_dim, n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, width, bias=qkv_bias)
        self.k_proj = nn.Linear(d_model, kv_width, bias=qkv_bias)
        self.v_proj = nn.Linear(d_model, kv_width, bias=qkv_bias)
        self.o_proj = nn.Linear(width, d_model, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, base=rope_base)

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], new_state)``; see the class docstring."""
        sequence.refuse_state(self, state, cu_seqlens)
        B, T, _ = x.shape
        q, k, v = self.project(x)  # (B, T, H | Hkv, D)
        o, state = self.attend(q, k, v, state, cu_seqlens)  # (B, T, H, D)
        return self.o_proj(o.reshape(B, T, -1)), state

    def project(self, x: torch.Tensor):
        """x ``[B, T, d_model]`` -> q ``[B, T, H, D]``, k, v ``[B, T, Hkv, D]`` (before RoPE)."""
        B, T, _ = x.shape
        D = self.head_dim
        return (self.q_proj(x).view(B, T, self.n_heads, D), self.k_proj(x).view(B, T, self.n_kv_heads, D),
                self.v_proj(x).view(B, T, self.n_kv_heads, D))

    def attend(self, q, k, v, state: dict | None, cu_seqlens: torch.Tensor | None):
        """Rotate q, k, attend (window, cache, packed sequences) -> ``(o [B, T, H, D], new cache)``.

        q ``[B, T, H, D]``, k, v ``[B, T, Hkv, D]`` as :meth:`project` returns them."""
        B, T, H, D = q.shape
        Hkv, dev = self.n_kv_heads, q.device
        cu = torch.arange(B + 1, device=dev) * T if cu_seqlens is None else cu_seqlens.long()
        N = cu.numel() - 1
        if state is None:
            state = {"k": q.new_zeros(N, 0, Hkv, D), "v": q.new_zeros(N, 0, Hkv, D),
                     "pos": torch.zeros(N, dtype=torch.long, device=dev)}
        qpos = token_positions(state["pos"], B, T, cu_seqlens, device=dev) + sequence.offset(self, T)  # (B, T)
        q, k = self.rotary(q, qpos), self.rotary(k, qpos)
        if sequence.group_of(self) is not None:  # LASP-2H: keys and values gathered from every rank
            return sequence.op(self, "attention", None)(q, *self._repeat_kv(k, v), window=self.window), None
        plain = state["k"].shape[1] == 0 and cu_seqlens is None and self.window is None
        if self.lmul:
            if not plain:
                raise NotImplementedError("Attention(lmul=True): only whole sequences without a cache, "
                                          "window or cu_seqlens")
            from ...numerics import lmul_attention

            o = lmul_attention(q, *self._repeat_kv(k, v), mantissa_bits=self.lmul_bits).to(q.dtype).transpose(1, 2)
        elif plain:
            keys, values = self._repeat_kv(k, v)
            o = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, keys, values)), is_causal=True)
        else:
            o = self._masked(q, k, v, qpos, state, cu)
        return o.transpose(1, 2), self._update_cache(state, k, v, cu)

    def _repeat_kv(self, k, v):
        """Key/value heads ``[..., Hkv, D]`` -> one per query head ``[..., H, D]``."""
        groups = self.n_heads // self.n_kv_heads
        if groups == 1:
            return k, v
        return k.repeat_interleave(groups, dim=-2), v.repeat_interleave(groups, dim=-2)

    def _cache_len(self, pos: torch.Tensor) -> torch.Tensor:
        return pos if self.window is None else pos.clamp(max=self.window - 1)

    def _masked(self, q, k, v, qpos, state, cu):
        """Attend over [cached keys of the row's sequences, new keys] under the block mask -> (B, H, T, D)."""
        B, T, H, D = q.shape
        N, L, Hkv = state["k"].shape[:3]
        tokens = torch.arange(B * T, device=q.device)
        seq_new = torch.searchsorted(cu[1:], tokens, right=True).view(B, T)  # (B, T) sequence of each token
        slot = torch.arange(L, device=q.device)
        seq_old = torch.arange(N, device=q.device)[:, None].expand(N, L)  # (N, L)
        pos_old = state["pos"][:, None] - self._cache_len(state["pos"])[:, None] + slot  # (N, L)
        valid_old = slot < self._cache_len(state["pos"])[:, None]  # (N, L)
        # (N, L) -> (B, N * L / B): row b of a batch owns cache row b; a packed row owns all of them
        keys = torch.cat([state["k"].reshape(B, -1, Hkv, D), k], dim=1)  # (B, S, Hkv, D)
        values = torch.cat([state["v"].reshape(B, -1, Hkv, D), v], dim=1)  # (B, S, Hkv, D)
        keys, values = self._repeat_kv(keys, values)  # (B, S, H, D)
        kseq = torch.cat([seq_old.reshape(B, -1), seq_new], dim=1)  # (B, S)
        kpos = torch.cat([pos_old.reshape(B, -1), qpos], dim=1)  # (B, S)
        kvalid = torch.cat([valid_old.reshape(B, -1), torch.ones_like(qpos, dtype=torch.bool)], dim=1)  # (B, S)
        mask = seq_new[:, :, None] == kseq[:, None, :]  # (B, T, S) block-diagonal
        mask &= kvalid[:, None, :] & (kpos[:, None, :] <= qpos[:, :, None])
        if self.window is not None:
            mask &= qpos[:, :, None] - kpos[:, None, :] < self.window  # (B, T, S)
        return F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                              attn_mask=mask[:, None])  # (B, H, T, D)

    def _update_cache(self, state, k, v, cu):
        """Append each sequence's new keys to its cache row, keep the last window - 1 -> new state."""
        N, L, H, D = state["k"].shape
        pos0, lengths = state["pos"], cu.diff()
        old, total = self._cache_len(pos0), self._cache_len(pos0) + lengths  # (N,)
        keep = total if self.window is None else total.clamp(max=self.window - 1)
        slot = torch.arange(int(keep.max()), device=k.device)  # (L',)
        c = (total - keep)[:, None] + slot  # (N, L') index into [old cache row, new tokens]
        src = torch.where(c < old[:, None], torch.arange(N, device=k.device)[:, None] * L + c,
                          N * L + cu[:-1, None] + c - old[:, None])
        valid = slot < keep[:, None]  # (N, L')
        src = torch.where(valid, src, 0)

        def gather(cache, new):
            flat = torch.cat([cache.reshape(N * L, H, D), new.reshape(-1, H, D)])  # (N*L + B*T, H, D)
            return torch.where(valid[..., None, None], flat[src], 0)  # (N, L', H, D)

        return {"k": gather(state["k"], k), "v": gather(state["v"], v), "pos": pos0 + lengths}
