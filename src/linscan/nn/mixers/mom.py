"""Mixture of Memories (Du et al. 2025): top-k routed Gated DeltaNet (or GLA) memories plus a shared one."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import checks, decay_scan, delta_scan
from .. import sequence
from ..conv import ShortConv
from ..init import keep_init
from ..norms import GatedRMSNorm

RECURRENCES = ("gated_deltanet", "gla")


class MoM(nn.Module):
    """M routed memories, each token written to (and read from) its top-k, plus an always-on shared one.

    MATH.md section 6. With ``p_t = softmax(x_t W_g)`` (fp32, W_g bias-free ``[d, M]``) and
    ``(w_t, I_t) = TopK(p_t, k)``, ``w_t <- w_t / sum(w_t)``:

        m in I_t:      S^m_t = exp(g^m_t) (I - beta^m_t k^m_t k^m_t^T) S^m_{t-1} + beta^m_t k^m_t v^m_t^T
        m not in I_t:  S^m_t = S^m_{t-1}               (frozen exactly: no decay, no write)
        o_t = sum_{m in I_t} w_{t,m} (S^m_t)^T q^m_t + (S^sh_t)^T q^sh_t
        y_t = W_o(RMSNorm_h(o_t) * swish(W_go x_t))

    Every memory (and the shared one) has its own k, v, beta and decay projections
    (``beta = sigmoid(W_b x)``, ``2 sigmoid`` with ``allow_neg_eigval``; Mamba-2 decay
    ``g = -exp(A_log) softplus(W_a x + dt_bias)`` with A_log, dt_bias shared across memories);
    q = W_q x is shared. One set of short convs (kernel ``conv_size``, SiLU) serves q, k, v
    of every memory, run over each memory's own subsequence: its neighbours are the earlier
    tokens routed to the same memory, so q^m differs per memory and outputs (not states)
    are mixed. q, k are L2-normalised per head. ``recurrence="gla"`` swaps the delta rule for
    ``S^m_t = Diag(alpha^m_t) S^m_{t-1} + k^m_t v^m_t^T`` with GLA's gate
    ``log alpha = logsigmoid(W_2^m W_1 x + b^m) / 16`` (W_1 of rank 16 shared, W_2^m, b^m per
    memory); the front end (convs, L2 norms) and the output stay the same.

    Routing (no capacity, no token dropped): every token is copied once per selected memory
    and once for the shared memory (slot M); ONE stable sort of the copies by
    ``key = n * S + m`` (n the sequence, S = M + 1 slots with the shared memory, M without)
    packs the segments (n, m) in time order; the empty ones are dropped and one varlen
    ``delta_scan`` / ``decay_scan`` call runs them all. The outputs are un-permuted,
    weighted (shared: weight 1) and the copies summed. When every sequence has one token
    (decode) no sort is needed: each copy is its own batch row.

    Load balance: ``self.aux_loss`` after each forward, MATH.md variant B (layer-wise), over
    the call's tokens t (all sequences), E = M:

        wfull_{t,e} = w_{t,e} if e in I_t else 0   (= softmax over the k top logits)
        f_e = mean_t 1[e in I_t]  (no gradient);   Pbar_e = mean_t wfull_{t,e}
        aux_loss = E * sum_e f_e Pbar_e             (= k when balanced, up to E when collapsed)

    A scalar in >= float32, differentiable w.r.t. the router; the model averages it over
    layers and adds 0.01 of it to the loss. ``self.router_probs`` ``[B, T, M]`` and
    ``self.router_index`` ``[B, T, k]`` (detached) hold the call's routing.

    Args:
        d_model: model width; n_heads: H; head_dim: K per head (default d_model // H).
        layer_idx: position in the stack (unused, part of the mixer interface).
        n_memories: M routed memories; top_k: k of them per token.
        shared_memory: add the always-on shared memory (weight 1).
        recurrence: ``"gated_deltanet"`` (``linscan.ops.delta_scan``) or ``"gla"``
            (``linscan.ops.decay_scan``).
        use_short_conv: the convs on q, k, v (False: SiLU on q, k only).
        conv_size: their kernel.
        expand_v: V / K.
        allow_neg_eigval: beta in [0, 2] instead of [0, 1] (gated_deltanet only).

    State (S = M + 1 slots with the shared memory, slot M; else M), slot-major per sequence
    so that row ``n * S + m`` of the flattened ``[N * S, ...]`` is segment key n * S + m:
    ``{"S": [N, S, H, K, V]}`` float32 (float64 for float64 inputs), plus with
    ``use_short_conv`` ``"conv_q": [N, S, H*K, W-1]``, ``"conv_k": [N, S, H*K, W-1]``,
    ``"conv_v": [N, S, H*V, W-1]``. A memory no token of a sequence picks keeps its rows bit for bit.
    """

    GLA_GATE_RANK, GLA_GATE_NORMALIZER = 16, 16.0

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, layer_idx: int = 0,
                 n_memories: int = 4, top_k: int = 2, shared_memory: bool = True,
                 recurrence: str = "gated_deltanet", use_short_conv: bool = True, conv_size: int = 4,
                 expand_v: float = 2.0, allow_neg_eigval: bool = False):
        super().__init__()
        _check_options(n_memories, top_k, recurrence, allow_neg_eigval)
        self.n_heads, self.head_dim = n_heads, head_dim or d_model // n_heads
        self.value_dim, self.layer_idx = int(self.head_dim * expand_v), layer_idx
        self.n_memories, self.top_k, self.shared_memory = n_memories, top_k, shared_memory
        self.n_slots = n_memories + int(shared_memory)
        self.recurrence, self.allow_neg_eigval = recurrence, allow_neg_eigval
        H, K, V, S = n_heads, self.head_dim, self.value_dim, self.n_slots
        self.router = nn.Linear(d_model, n_memories, bias=False)
        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        # every slot's k, v (and beta, decay input) in one GEMM, rows grouped by slot: (M + 1) / (k + 1)
        # times the FLOPs of projecting only the routed copies, but one dense GEMM and no host sync
        self.slot_width = H * K + H * V + (2 * H if recurrence == "gated_deltanet" else 0)
        self.mem_proj = nn.Linear(d_model, S * self.slot_width, bias=False)
        if recurrence == "gated_deltanet":
            self.A_log = nn.Parameter(torch.empty(H).uniform_(0, 16).clamp_min(1e-4).log())
            dt = torch.exp(torch.empty(H).uniform_(math.log(1e-3), math.log(0.1))).clamp_min(1e-4)
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
            keep_init(self.A_log, self.dt_bias)
        else:
            self.gk_down = nn.Linear(d_model, self.GLA_GATE_RANK, bias=False)
            self.gk_up = nn.Linear(self.GLA_GATE_RANK, S * H * K)  # bias 0: decays ~0.96 at init
            nn.init.zeros_(self.gk_up.bias)
        self.convs = None
        if use_short_conv:
            widths = {"q": H * K, "k": H * K, "v": H * V}
            self.convs = nn.ModuleDict({name: ShortConv(w, conv_size) for name, w in widths.items()})  # SiLU
        self.g_proj = nn.Linear(d_model, H * V, bias=False)
        self.norm = GatedRMSNorm(V, activation="silu")
        self.o_proj = nn.Linear(H * V, d_model, bias=False)
        self.aux_loss = self.router_probs = self.router_index = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B, T, d]`` -> weights ``[B, T, k]`` (renormalised, x's dtype), memories ``[B, T, k]`` (int64).

        Also sets ``aux_loss`` (variant B, see the class docstring), ``router_probs`` and ``router_index``.
        """
        f32 = torch.promote_types(x.dtype, torch.float32)  # the softmax in >= float32
        probs = self.router(x).to(f32).softmax(-1)  # (B, T, M)
        weights, index = probs.topk(self.top_k, dim=-1)  # (B, T, k)
        weights = weights / weights.sum(-1, keepdim=True)
        self.aux_loss = balance_loss(weights, index, self.n_memories)
        self.router_probs, self.router_index = probs.detach(), index
        return weights.to(x.dtype), index

    def project(self, x: torch.Tensor):
        """Every slot's inputs at every token (before the convs), x ``[B, T, d]`` ->

        q ``[B, T, H*K]``, k ``[B, T, S, H*K]``, v ``[B, T, S, H*V]``, beta ``[B, T, S, H]`` (None
        for GLA) and the log-decay g ``[B, T, S, H]`` (GLA: ``[B, T, S, H, K]``), gates in >= float32.
        """
        B, T, _ = x.shape
        H, K, V, S = self.n_heads, self.head_dim, self.value_dim, self.n_slots
        f32 = torch.promote_types(x.dtype, torch.float32)
        parts = self.mem_proj(x).view(B, T, S, self.slot_width)  # (B, T, S, F)
        if self.recurrence == "gla":
            k, v = parts.split([H * K, H * V], dim=-1)
            gate = self.gk_up(self.gk_down(x)).to(f32).view(B, T, S, H, K)  # (B, T, S, H, K)
            return self.q_proj(x), k, v, None, F.logsigmoid(gate) / self.GLA_GATE_NORMALIZER
        k, v, b, a = parts.split([H * K, H * V, H, H], dim=-1)
        beta = torch.sigmoid(b.to(f32)) * (2 if self.allow_neg_eigval else 1)  # (B, T, S, H)
        g = -self.A_log.to(f32).exp() * F.softplus(a.to(f32) + self.dt_bias.to(f32))  # (B, T, S, H)
        return self.q_proj(x), k, v, beta, g

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> ``(y [B, T, d_model], new_state)``; see the class docstring.

        With ``cu_seqlens`` (int ``[N + 1]``, B == 1) the N packed sequences are routed, scanned and
        carried separately; ``state`` then holds N rows.
        """
        sequence.refuse_state(self, state, cu_seqlens)
        if sequence.group_of(self) is not None:
            raise ValueError("mom: sequence parallelism not supported yet")
        B, T, _ = x.shape
        H, V, S, L = self.n_heads, self.value_dim, self.n_slots, B * T
        N = checks.check_cu_seqlens(cu_seqlens, checks.Dims(B, T, H, self.head_dim, V), x.device)
        if state is not None and tuple(state["S"].shape[:2]) != (N, S):
            raise ValueError(f"state['S']: expected [N, S, H, K, V] with N = {N}, S = {S}, "
                             f"got {list(state['S'].shape)}")
        # 1. route: (w_t, I_t) = TopK(softmax(x_t W_g), k), renormalised; aux loss of this call
        weights, index = self.route(x)  # (B, T, k), (B, T, k)
        # 2. every slot's q, k, v, beta, g at every token (slot M: the shared memory)
        q, k, v, beta, g = (None if p is None else p.flatten(0, 1) for p in self.project(x))  # (L, ...)
        # 3. copies: token t -> its k memories (+ slot M, weight 1), key = n S + m
        slot = index.flatten(0, 1)  # (L, k)
        if self.shared_memory:
            slot = torch.cat([slot, slot.new_full((L, 1), self.n_memories)], dim=1)  # (L, C)
            weights = torch.cat([weights, weights.new_ones(B, T, 1)], dim=-1)  # (B, T, C)
        C = slot.shape[1]
        token = torch.arange(L, device=x.device).repeat_interleave(C)  # (L * C,)
        key = _sequence_ids(B, T, cu_seqlens, x.device)[token] * S + slot.flatten()  # (L * C,)
        # 4. pack the segments (n, m): one stable sort (decode: every copy is its own row)
        order, rows, seg_cu = _pack(key, N * S, decode=N == L)
        if order is not None:
            token, key = token[order], key[order]
        shape = (L * C, 1) if order is None else (1, L * C)  # (batch, time) of the op
        q, k, v, beta, g = _gather(token, key % S, shape, q, k, v, beta, g)  # (b, t, ...)
        # 5.-6. short convs per segment from each (n, m)'s cache, ONE varlen scan; states back to their rows
        o, new_state = self._recur(q, k, v, beta, g, rows=rows, state=state, n_rows=N * S, cu_seqlens=seg_cu)
        o = o.reshape(L * C, H, V)  # (L * C, H, V)
        # 7. un-permute, weight (shared: 1), sum the copies
        if order is not None:
            o = torch.empty_like(o).index_copy(0, order, o)
        o = (o.view(B, T, C, H, V) * weights[..., None, None]).sum(2)  # (B, T, H, V)
        # 8. y = W_o(RMSNorm_h(o) * swish(W_go x))
        o = self.norm(o, self.g_proj(x).view(B, T, H, V))  # (B, T, H, V)
        new_state = {name: s.unflatten(0, (N, S)) for name, s in new_state.items()}  # (N, S, ...)
        return self.o_proj(o.reshape(B, T, H * V)), new_state

    def _recur(self, q, k, v, beta, g, *, rows, state, n_rows, cu_seqlens):
        """Convs and scan of the packed copies; q, k ``[b, t, H*K]``, v ``[b, t, H*V]``, gates ``[b, t, H(, K)]``.

        Either b = copies, t = 1 (decode, ``cu_seqlens`` None) or b = 1 with ``cu_seqlens`` over the
        segments. ``rows [R]``: the state row of each batch row / segment. Returns o ``[b, t, H, V]``
        and the new flattened state ``{name: [n_rows, ...]}``: rows not in ``rows`` are the old ones.
        """
        b, t, _ = q.shape
        H, K, V = self.n_heads, self.head_dim, self.value_dim
        old = {} if state is None else {name: s.flatten(0, 1) for name, s in state.items()}  # (N * S, ...)
        new = {}
        if self.convs is not None:
            q, new["conv_q"] = self._conv("q", q, old.get("conv_q"), rows, n_rows, cu_seqlens)
            k, new["conv_k"] = self._conv("k", k, old.get("conv_k"), rows, n_rows, cu_seqlens)
            v, new["conv_v"] = self._conv("v", v, old.get("conv_v"), rows, n_rows, cu_seqlens)
        else:
            q, k = F.silu(q), F.silu(k)
        q = F.normalize(q.view(b, t, H, K), dim=-1)  # (b, t, H, K)
        k = F.normalize(k.view(b, t, H, K), dim=-1)  # (b, t, H, K)
        v = v.view(b, t, H, V)  # (b, t, H, V)
        S0 = old["S"][rows] if "S" in old else None  # (R, H, K, V)
        if self.recurrence == "gla":
            o, S1 = decay_scan(q, k, v, g, initial_state=S0, output_final_state=True, cu_seqlens=cu_seqlens)
        else:
            o, S1 = delta_scan(q, k, v, beta, g, initial_state=S0, output_final_state=True,
                               cu_seqlens=cu_seqlens)
        new["S"] = _put(old.get("S"), rows, S1, n_rows)
        return o, new

    def _conv(self, name: str, x: torch.Tensor, cache, rows: torch.Tensor, n_rows: int, cu_seqlens):
        """One short conv over the segments, each from its (sequence, slot) cache ``[n_rows, D, W-1]``."""
        y, tail = self.convs[name](x, None if cache is None else cache[rows], cu_seqlens)
        return y, _put(cache, rows, tail, n_rows)


def balance_loss(weights: torch.Tensor, index: torch.Tensor, n_memories: int) -> torch.Tensor:
    """MATH.md 6 variant B of one layer: ``E sum_e f_e Pbar_e`` over all tokens of ``[..., k]`` routing.

    weights: renormalised top-k weights ``[..., k]``; index: their memories ``[..., k]``; E = n_memories.
    """
    wfull = torch.zeros(*weights.shape[:-1], n_memories, dtype=weights.dtype,
                        device=weights.device).scatter(-1, index, weights)  # (..., E)
    chosen = torch.zeros_like(wfull).scatter(-1, index, 1.0)  # (..., E)
    f = chosen.flatten(0, -2).mean(0)  # (E,) share of tokens routed to e: no gradient
    pbar = wfull.flatten(0, -2).mean(0)  # (E,)
    return n_memories * (f * pbar).sum()


def _check_options(n_memories: int, top_k: int, recurrence: str, allow_neg_eigval: bool) -> None:
    if n_memories < 1:
        raise ValueError(f"n_memories: expected a positive int, got {n_memories!r}")
    if not 1 <= top_k <= n_memories:
        raise ValueError(f"top_k: expected 1 <= top_k <= n_memories = {n_memories}, got {top_k!r}")
    if recurrence not in RECURRENCES:
        raise ValueError(f"recurrence: expected one of {list(RECURRENCES)}, got {recurrence!r}")
    if allow_neg_eigval and recurrence != "gated_deltanet":
        raise ValueError(f"allow_neg_eigval: only for recurrence='gated_deltanet', got {recurrence!r}")


def _sequence_ids(B: int, T: int, cu_seqlens: torch.Tensor | None, device) -> torch.Tensor:
    """The sequence n of every token of ``[B, T]`` (n = b, or the packed sequence), ``[B * T]``."""
    if cu_seqlens is None:
        return torch.arange(B, device=device).repeat_interleave(T)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.arange(len(lengths), device=device).repeat_interleave(lengths, output_size=T)


def _pack(key: torch.Tensor, n_keys: int, *, decode: bool):
    """Order of the copies, state row of each segment and the segments' ``cu_seqlens``.

    decode (one token per sequence: every key is distinct): no sort, each copy its own row,
    ``(None, key, None)``. Else ``(order, rows, cu_seqlens)`` with ``order`` the stable sort of
    ``key`` (time order kept inside each segment) and only the non-empty segments.
    """
    if decode:
        return None, key, None
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=n_keys)  # (N * S,)
    rows = counts.nonzero().squeeze(1)  # (R,) ascending, as the sorted keys
    cu = F.pad(counts[rows].cumsum(0), (1, 0))  # (R + 1,)
    return order, rows, cu


def _gather(token: torch.Tensor, slot: torch.Tensor, shape: tuple[int, int], q, *slotted):
    """The copies' inputs, shaped ``(*shape, ...)``: q ``[L, ...]`` at ``token``, the slotted inputs
    ``[L, S, ...]`` (None passes) at ``(token, slot)``."""
    S = slotted[0].shape[1]
    cell = token * S + slot  # (L * C,) into the flattened (L * S) slot inputs
    return (q[token].view(*shape, *q.shape[1:]),
            *(None if p is None else p.flatten(0, 1)[cell].view(*shape, *p.shape[2:]) for p in slotted))


def _put(old: torch.Tensor | None, rows: torch.Tensor, value: torch.Tensor, n_rows: int | None):
    """``old`` ``[n_rows, ...]`` (None: zeros) with ``rows`` replaced by ``value``; other rows bit for bit."""
    if old is None:
        old = value.new_zeros(n_rows, *value.shape[1:])
    return old.index_copy(0, rows, value.to(old.dtype))
