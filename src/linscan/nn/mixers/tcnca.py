"""TCNCA (Terzic et al. 2023, MATH.md 10.2): a dilated causal TCN in place of MEGA's EMA, then chunked attention.

    x' = SiLU(TCN(x) + omega * x)                      omega: one learnable weight per channel
    q = W_q x',  k = W_k x',  v = W_v x                 [B, T, H, D] each
    o_t = softmax attention of q_t over k_s, v_s with s in [C floor(t / C), t]   (inside t's chunk)
    y = W_o o + W_h x'                                  (W_h x' only with ``tcn_to_output``, the default)

TCN: ``n_layers`` causal depthwise convolutions with kernel K and dilations 1, 2, 4, ...,
2^(n_layers - 1), padded on the left only, SiLU between layers; its receptive field is
``1 + (K - 1)(2^n_layers - 1)`` tokens (MATH.md: ``1 + (K-1)(f^D - 1)/(f - 1)`` with f = 2).
Attention sees only its own chunk; only the TCN carries information across chunk borders,
so output t depends on exactly the inputs ``[C floor(t / C) - (receptive field - 1), t]``.

From the sources (MATH.md 10.2, verified): the EMA of MEGA's block is replaced by a TCN and
chunked attention is kept; x' = SiLU(EMA(x) + omega x) feeds q and k; a simplified TCNCA
without MEGA's multiplicative gates is competitive on associative recall.

Choices of this implementation, (unverified) against the paper:

- the simplified block: MEGA's multiplicative gates dropped (as recalled, not checked against the
  MEGA source: a reset gate r on the attention output, an update gate phi between the candidate h
  and the input); what stays of its candidate
  ``h = SiLU(W_h x' + U_h (r * o))`` is the sum ``W_h x' + W_o o`` (no SiLU: the block's residual
  adds it to x, where MEGA's phi mixed h and x), so that the TCN's view across chunk borders
  reaches the output and not only the attention weights (``tcn_to_output=False``: ``W_o o`` only);
  q, k are plain linear maps of x' (MEGA: a shared SiLU projection z with per-channel scale and
  offset), v a linear map of x (MEGA: SiLU of one);
- TCN kernel 3, 5 layers (receptive field 63, about one default chunk), depthwise, no bias,
  no residual connections inside the stack; weights N(0, 1/K) (each layer keeps a unit-variance
  input's variance before the SiLU), the last layer's 10x smaller; omega initialised to 1.
  With the last layer at full size the 63-token mixture dominated q and k from the start and
  the 2-layer MQAR preset stayed near chance for 600 steps (0.33 on the training lengths; 0.89
  at chunk 128: slow to start rather than unable); with it 10x smaller, zero, a Dirac init (x'
  local at the start) or a 1-layer TCN it reached 0.96-0.97 (one seed each);
- several heads (MEGA uses one), scale 1/sqrt(D); positions inside a chunk by rotary embedding
  of the position within the chunk (MEGA: a relative position bias); chunk size 64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import varlen
from .. import sequence
from ..rotary import RotaryEmbedding


# (unverified) chosen on the `linscan eval mqar` preset (module docstring): at 1 it learned nothing in 600 steps
LAST_LAYER_GAIN = 0.1


def receptive_field(kernel_size: int, n_layers: int) -> int:
    """Tokens an output of a causal TCN with dilations 1, 2, ..., 2^(n_layers - 1) reads: 1 + (K-1)(2^D - 1)."""
    return 1 + (kernel_size - 1) * (2**n_layers - 1)


class CausalTCN(nn.Module):
    """A stack of causal depthwise convolutions, dilation ``2^i`` in layer i, SiLU between layers.

    ``h_0 = x``, ``h_{i+1} = conv_i(h_i)`` (SiLU applied to every ``h_{i+1}`` but the last), where
    ``conv_i(h)_t = sum_j w_{i,j} * h_{t - (K - 1 - j) 2^i}`` per channel (zeros before the start).

    Args:
        dim: channels.
        kernel_size: K (>= 2).
        n_layers: D (>= 1).

    State: a list of D tensors, entry i the last ``(K - 1) 2^i`` inputs of layer i,
    ``[N, dim, (K - 1) 2^i]``, so that decoding one token at a time equals the whole convolution.
    """

    def __init__(self, dim: int, kernel_size: int = 3, n_layers: int = 5):
        super().__init__()
        self.dim, self.kernel_size, self.n_layers = dim, kernel_size, n_layers
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size, groups=dim, dilation=2**i, bias=False)
                                   for i in range(n_layers))
        for i, conv in enumerate(self.convs):
            # the last layer 10x smaller: x' = SiLU(TCN(x) + omega x) starts close to its local part
            gain = LAST_LAYER_GAIN if i == n_layers - 1 else 1.0
            nn.init.normal_(conv.weight, std=gain / math.sqrt(kernel_size))

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.kernel_size, self.n_layers)

    def history(self, i: int) -> int:
        """Inputs layer i keeps between calls: ``(K - 1) 2^i``."""
        return (self.kernel_size - 1) * 2**i

    def forward(self, x: torch.Tensor, state: list[torch.Tensor] | None = None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x [N, T, dim]`` -> ``(y [N, T, dim], new_state)``.

        ``lengths [N]``: real tokens per row (default T); a row's padding after its end is never
        read by its real outputs (causal), and the new state holds the inputs before the end.
        """
        N, T, E = x.shape
        lengths = torch.full((N,), T, device=x.device) if lengths is None else lengths.long()
        h, new_state = x.transpose(1, 2), []  # (N, E, T) channels first for conv1d
        for i, conv in enumerate(self.convs):
            d, W = 2**i, self.history(i)
            past = h.new_zeros(N, E, W) if state is None else state[i].to(h.dtype)
            full = torch.cat([past, h], dim=2)  # (N, E, W + T)
            if T == 1:
                # decode step: the K taps sit every d columns of the W + 1 = (K - 1) d + 1 columns
                h = (full[..., ::d] * conv.weight[:, 0]).sum(-1, keepdim=True)  # (N, E, 1)
            else:
                h = F.conv1d(full, conv.weight, dilation=d, groups=E)  # (N, E, T)
            # the last W inputs before each row's end sit at columns len .. len + W - 1 of `full`
            cols = lengths[:, None] + torch.arange(W, device=x.device)  # (N, W)
            new_state.append(full.gather(2, cols[:, None, :].expand(N, E, W)))  # (N, E, W)
            if i < self.n_layers - 1:
                h = F.silu(h)
        return h.transpose(1, 2), new_state


def chunked_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Softmax attention inside chunks: token s sees the keys ``[C floor(s / C), s]``, C = ``chunk_size``.

    q, k, v: ``[B, S, H, D]``; chunks start at index 0 (the last one may be partial).
    Returns ``[B, S, H, D]``, q's dtype; scale 1/sqrt(D). Cost O(S C D H): linear in S.
    """
    B, S, H, D = q.shape
    C = chunk_size
    pad = -S % C
    q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))  # (B, S', H, D), zeros after the end
    n = (S + pad) // C

    def chunks(t):
        return t.reshape(B * n, C, H, D).transpose(1, 2)  # (B n, H, C, D)

    # the padded keys sit after every real query of their chunk: the causal mask hides them
    o = F.scaled_dot_product_attention(chunks(q), chunks(k), chunks(v), is_causal=True)  # (B n, H, C, D)
    return o.transpose(1, 2).reshape(B, S + pad, H, D)[:, :S]


class TCNCA(nn.Module):
    """TCNCA, simplified (no multiplicative gates): the module docstring's block, with a decode state.

    Args:
        d_model: model width; n_heads: H; head_dim: D per head (default d_model // H; even with ``rotary``).
        layer_idx: position in the stack (unused, part of the mixer interface).
        chunk_size: C, the attention span: tokens ``[C floor(t / C), t]`` (counted from each sequence's start).
        tcn_kernel: K of every TCN layer (>= 2).
        tcn_layers: TCN depth (>= 1); receptive field ``1 + (K - 1)(2^tcn_layers - 1)``.
        rotary: rotary embedding of q, k by the position within the chunk (False: no positions).
        tcn_to_output: add ``W_h x'`` to the output (one ``o_proj`` reads ``[o, x']``); False: ``W_o o``
            only, so that x' shapes the attention weights alone.

    State (constant size; N = B, or the number of packed sequences):
    ``"tcn_i": [N, d_model, (K - 1) 2^i]`` the last inputs of TCN layer i (i < tcn_layers);
    ``"k", "v": [N, C - 1, H, D]`` the current chunk's keys (before rotation) and values, the first
    ``fill`` slots used, the others zero; ``"fill": [N]`` int64, tokens in the current chunk
    (``tokens seen mod C``): a chunk that fills up is dropped and ``fill`` restarts at 0.
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 chunk_size: int = 64, tcn_kernel: int = 3, tcn_layers: int = 5, rotary: bool = True,
                 tcn_to_output: bool = True):
        super().__init__()
        for name, value, low in (("chunk_size", chunk_size, 1), ("tcn_kernel", tcn_kernel, 2),
                                 ("tcn_layers", tcn_layers, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        for name, value in (("rotary", rotary), ("tcn_to_output", tcn_to_output)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}: expected a bool, got {value!r}")
        self.n_heads, self.head_dim = n_heads, head_dim or d_model // n_heads
        if rotary and self.head_dim % 2:
            raise ValueError(f"head_dim: expected an even head dim with rotary=True, got {self.head_dim}")
        self.layer_idx, self.chunk_size, self.tcn_to_output = layer_idx, chunk_size, tcn_to_output
        width = n_heads * self.head_dim
        self.tcn = CausalTCN(d_model, tcn_kernel, tcn_layers)
        self.omega = nn.Parameter(torch.ones(d_model))
        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.k_proj = nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)
        # W_o and W_h as one matrix: one residual write, scaled as such by linscan.nn.init
        self.o_proj = nn.Linear(width + (d_model if tcn_to_output else 0), d_model, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim) if rotary else None

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], new_state)``; see the class docstring."""
        if sequence.group_of(self) is not None:
            raise NotImplementedError("TCNCA under sequence parallelism: not supported (the TCN would need the "
                                      "previous rank's last inputs and chunks aligned with the ranks)")
        B, T, _ = x.shape
        if cu_seqlens is None:
            xs, lengths = x, torch.full((B,), T, dtype=torch.long, device=x.device)  # (N, L, d)
        else:
            if B != 1:
                raise ValueError(f"x: expected batch size 1 with cu_seqlens (a packed batch), got {B}")
            # padding sits after each sequence's end: causal TCN and attention never read it
            xs, lengths = varlen.pad(x, cu_seqlens), cu_seqlens.long().diff()  # (N, L, d)
        N, L, _ = xs.shape
        self._check_state(state, N)
        H, D = self.n_heads, self.head_dim
        # 1. x' = SiLU(TCN(x) + omega x): the only path across chunk borders
        tcn_state = None if state is None else [state[f"tcn_{i}"] for i in range(self.tcn.n_layers)]
        h, tcn_state = self.tcn(xs, tcn_state, lengths)  # (N, L, d)
        xp = F.silu(h + self.omega * xs)  # (N, L, d)
        # 2. q, k from x', v from x
        q, k, v = self.q_proj(xp).view(N, L, H, D), self.k_proj(xp).view(N, L, H, D), self.v_proj(xs).view(N, L, H, D)
        # 3. attention inside chunks, continuing each row's current chunk
        if state is not None and L == 1 and cu_seqlens is None:
            o, cache = self._decode_step(q, k, v, state)
        else:
            o, cache = self._chunked(q, k, v, state, lengths)
        o = o.reshape(N, L, H * D)
        y = self.o_proj(torch.cat([o, xp], dim=-1) if self.tcn_to_output else o)  # (N, L, d)
        if cu_seqlens is not None:
            y = varlen.unpad(y, cu_seqlens)  # (1, T, d)
        return y, {**{f"tcn_{i}": s for i, s in enumerate(tcn_state)}, **cache}

    def _check_state(self, state: dict | None, N: int) -> None:
        if state is None:
            return
        keys = {f"tcn_{i}" for i in range(self.tcn.n_layers)} | {"k", "v", "fill"}
        if not isinstance(state, dict) or set(state) != keys:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state: expected a TCNCA state with keys {sorted(keys)}, got {got}")
        if state["fill"].shape != (N,) or state["k"].shape[:2] != (N, self.chunk_size - 1):
            raise ValueError(f"state: expected {N} rows (sequences) and {self.chunk_size - 1} key slots, got "
                             f"fill {tuple(state['fill'].shape)}, k {tuple(state['k'].shape)}")

    def _rotate(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return t if self.rotary is None else self.rotary(t, positions)

    def _chunked(self, q, k, v, state: dict | None, lengths: torch.Tensor):
        """Chunked attention over [the rows' current chunks, new tokens] -> ``(o [N, L, H, D], cache)``.

        Buffer slot s of row n holds the token at position ``s`` of the chunk-aligned stretch that
        starts with the row's current chunk: its ``fill_n`` cached tokens, then the new ones."""
        N, L, H, D = q.shape
        C = self.chunk_size
        rows = torch.arange(N, device=q.device)[:, None]  # (N, 1)
        if state is None:  # every row starts a chunk: the buffer is the new tokens
            fill = torch.zeros(N, dtype=torch.long, device=q.device)
            qb, kb, vb = q, k, v  # (N, S = L, H, D)
        else:
            fill = state["fill"].long()
            slot = torch.arange(C - 1 + L, device=q.device)[None, :]  # (1, S)
            new = slot - fill[:, None]  # (N, S) index among the new tokens
            # [cached C - 1 | new L | one zero row]: cache slot, new token, or the zero row past the end
            src = torch.where(new < 0, slot, torch.where(new < L, C - 1 + new, C - 1 + L))  # (N, S)

            def place(cached, t):
                zero = t.new_zeros(N, 1, H, D)
                return torch.cat([cached.to(t.dtype), t, zero], dim=1)[rows, src]  # (N, S, H, D)

            qb, kb, vb = place(q.new_zeros(N, C - 1, H, D), q), place(state["k"], k), place(state["v"], v)
        pos = torch.arange(qb.shape[1], device=q.device) % C  # (S,) position within the chunk
        ob = chunked_causal_attention(self._rotate(qb, pos), self._rotate(kb, pos), vb, C)  # (N, S, H, D)
        o = ob[rows, fill[:, None] + torch.arange(L, device=q.device)]  # (N, L, H, D)
        return o, self._cache(kb, vb, fill, fill + lengths)

    def _decode_step(self, q, k, v, state: dict):
        """One token per row: attend over the current chunk's keys and its own -> ``(o [N, 1, H, D], cache)``."""
        N, _, H, D = q.shape
        C = self.chunk_size
        fill = state["fill"].long()
        slot = torch.arange(C, device=q.device)  # (C,)
        here = (slot[None, :] == fill[:, None])[..., None, None]  # (N, C, 1, 1)
        zero = k.new_zeros(N, 1, H, D)
        kb = torch.where(here, k, torch.cat([state["k"].to(k.dtype), zero], dim=1))  # (N, C, H, D)
        vb = torch.where(here, v, torch.cat([state["v"].to(v.dtype), zero], dim=1))  # (N, C, H, D)
        visible = slot[None, :] <= fill[:, None]  # (N, C)
        o = F.scaled_dot_product_attention(self._rotate(q, fill[:, None]).transpose(1, 2),
                                           self._rotate(kb, slot).transpose(1, 2), vb.transpose(1, 2),
                                           attn_mask=visible[:, None, None, :])  # (N, H, 1, D)
        return o.transpose(1, 2), self._cache(kb, vb, fill, fill + 1)

    def _cache(self, kb, vb, fill, end):
        """The keys and values of each row's chunk after its last token (buffer slots ``end - fill' ..
        end - 1``, ``fill' = end mod C``), zero-padded to ``[N, C - 1, H, D]``."""
        N, S, H, D = kb.shape
        C = self.chunk_size
        new_fill = end % C
        slot = torch.arange(C - 1, device=kb.device)[None, :]  # (1, C - 1)
        src = ((end - new_fill)[:, None] + slot).clamp(max=S - 1)  # (N, C - 1)
        keep = (slot < new_fill[:, None])[..., None, None]  # (N, C - 1, 1, 1)
        rows = torch.arange(N, device=kb.device)[:, None]
        return {"k": torch.where(keep, kb[rows, src], 0), "v": torch.where(keep, vb[rows, src], 0),
                "fill": new_fill}
