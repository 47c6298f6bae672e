"""Sequence-parallel causal softmax attention (LASP-2H, MATH.md section 7).

The softmax layers of a hybrid have no fixed-size state to pass between ranks, so the ranks
exchange the keys and values themselves. Rank r holds tokens ``[r L, (r + 1) L)`` (L = T/W)
of q, k and v; its query t sits at global position ``r L + t``.

Forward (one all-gather):
  1. gather    K | V of every rank, ``[W, B, L, H, D + Dv]`` -> ``[B, T, H, D + Dv]``   all_gather
  2. range     the keys this rank's queries may see: ``[lo, (r + 1) L)``, lo the first
               position inside the window of the first query and inside its sequence
  3. attend    softmax(q K^T scale + mask) V over that range (SDPA with a boolean mask:
               causal at rank r's offset, window, same packed sequence)       graph kept
Backward (one reduce-scatter):
  4. local     dq, and dK | dV for every gathered key (zero outside the range)
  5. return    the gathered keys' gradients summed over the ranks, each rank keeping its own
               slice ``[B, L, H, D + Dv]``                                     reduce_scatter
               (gloo without reduce_scatter: an all-reduce of the stack, own slice kept)

Step 5 is the dual of step 1: rank r's keys were seen by the queries of ranks >= r, so
their gradient is the sum of those ranks' contributions. All of K and V is gathered even
though the ranks after r (and, with a window or packed sequences, those before lo) are
not attended to: one collective of equal pieces instead of point-to-point sends.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..ops import checks
from . import comm
from .pieces import pieces


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int | None = None,
              scale: float | None = None, cu_seqlens: torch.Tensor | None = None, group=None) -> torch.Tensor:
    """Causal softmax attention over one sequence split across the ranks of ``group``.

    Args:
        q, k: ``[B, T/W, H, D]``, v: ``[B, T/W, H, Dv]``: rank r's tokens ``[r T/W, (r+1) T/W)``
            (every rank the same T/W, dtype and sizes).
        window: sliding-window length: the query at position t sees the keys at positions
            ``(t - window, t]`` (None: all earlier keys), as ``linscan.nn.mixers.Attention``.
        scale: logit scale (default ``1/sqrt(D)``).
        cu_seqlens: global offsets ``[N + 1]`` (int32/int64, B == 1, the same on every rank,
            last entry ``W * T/W``): tokens attend only within their own sequence; sequences
            may straddle ranks.
        group: a ``torch.distributed`` process group (None: the world).

    Returns:
        o ``[B, T/W, H, Dv]`` in q's dtype: rank r's slice of the output.

    Exchanged (bytes sent per rank; e = bytes per element):
        forward: all-gather of K | V, ``(W - 1) B (T/W) H (D + Dv) e`` (``comm.traffic["all_gather"]``);
        backward: reduce-scatter of dK | dV, the same count (``comm.traffic["reduce_scatter"]``;
        twice that where gloo lacks reduce_scatter and an all-reduce stands in); plus two
        small all-gathers of the argument check (``"check"``).
    Gradients: each rank gets the full gradient of its slice of q, k and v (the loss being the
    sum of all ranks' losses). Every rank must call backward when one does.

    Raises ValueError / TypeError naming the argument, the same on every rank (no rank is left
    waiting in a collective): T/W differing between ranks (T not divisible by W) or any other
    shape or dtype mismatch between ranks ("q: expected the same on every rank ..."),
    ``window < 1``, ``cu_seqlens`` not ending at ``W * T/W``.
    """
    ranks = comm.resolve(group)

    def validate():
        dims = checks.check_qkv(q, k, v)
        checks.check_cu_seqlens(cu_seqlens, dataclasses.replace(dims, T=dims.T * ranks.world), q.device)
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
            raise ValueError(f"window: expected None or an int >= 1, got {window!r}")
        return checks.check_scale(scale, dims.K)

    grad_flags = (torch.is_grad_enabled(), q.requires_grad, k.requires_grad, v.requires_grad)
    scale_checked = comm.agree(
        ranks, q.device, validate, q=q, k=k, v=v, cu_seqlens=cu_seqlens,
        cu_seqlens_values=None if cu_seqlens is None else tuple(cu_seqlens.tolist()),
        window=window, scale=scale, requires_grad=grad_flags)   # the backward's collective: all or none
    cu = None if cu_seqlens is None else [int(c) for c in cu_seqlens.tolist()]
    return _Attention.apply(q, k, v, window, scale_checked, cu, ranks)


class _Attention(torch.autograd.Function):
    """Steps 1-5 of the module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, window, scale, cu, ranks):
        B, L, H, D = q.shape
        W = ranks.world
        # 1. gather K | V
        kv = comm.all_gather(torch.cat([k, v], dim=-1), ranks)         # (W, B, L, H, D + Dv)
        kv = kv.transpose(0, 1).reshape(B, W * L, H, -1)               # (B, T, H, D + Dv)
        # 2. the visible key range and mask
        lo, hi = _key_range(ranks.rank, W, L, window, cu)
        mask = _visible(ranks.rank * L, L, lo, hi, window, cu, q.device)  # (L, hi - lo)
        # 3. attend, keeping the graph for step 4 when a gradient is wanted
        need_q, need_kv = ctx.needs_input_grad[0], ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        with torch.enable_grad() if need_q or need_kv else nullcontext():
            q_leaf = q.detach().requires_grad_(need_q)
            kv_leaf = kv.detach().requires_grad_(need_kv)
            o = _attend(q_leaf, kv_leaf[:, lo:hi], D, mask, scale)     # (B, L, H, Dv)
        ctx.graph = (o, q_leaf, kv_leaf) if need_q or need_kv else None
        ctx.ranks, ctx.D = ranks, D
        return o.detach()

    @staticmethod
    def backward(ctx, d_o):
        o, q_leaf, kv_leaf = ctx.graph
        del ctx.graph
        ranks, D = ctx.ranks, ctx.D
        wanted = [x for x in (q_leaf, kv_leaf) if x.requires_grad]
        # 4. local gradients: dq, and dK | dV of every gathered key
        grads = list(torch.autograd.grad(o, wanted, d_o))
        dq = grads.pop(0) if q_leaf.requires_grad else None
        dk = dv = None
        if kv_leaf.requires_grad:
            # 5. sum over the ranks, own slice back
            B, T, H, C = kv_leaf.shape
            stacked = grads.pop().reshape(B, ranks.world, T // ranks.world, H, C).transpose(0, 1)  # (W, B, L, H, C)
            d_kv = _reduce_scatter(stacked, ranks)                       # (B, L, H, D + Dv)
            dk, dv = d_kv[..., :D], d_kv[..., D:]
        # window, scale, cu_seqlens, ranks: not differentiable
        return dq, dk, dv, None, None, None, None


def _key_range(rank: int, world: int, L: int, window: int | None, cu: list[int] | None) -> tuple[int, int]:
    """[lo, hi): the global key positions that some query of rank ``rank`` may see."""
    lo, hi = 0, (rank + 1) * L
    if window is not None:
        lo = max(lo, rank * L - window + 1)
    if cu is not None:                           # the start of the sequence holding the first query
        lo = max(lo, cu[pieces(cu, rank, world, L, 1).first])
    return lo, hi


def _visible(start: int, L: int, lo: int, hi: int, window: int | None, cu: list[int] | None,
             device: torch.device) -> torch.Tensor:
    """Boolean mask ``[L, hi - lo]``: query ``start + t`` may see key ``lo + s``."""
    qpos = torch.arange(start, start + L, device=device)[:, None]     # (L, 1)
    kpos = torch.arange(lo, hi, device=device)[None, :]               # (1, S)
    mask = kpos <= qpos
    if window is not None:
        mask &= qpos - kpos < window
    if cu is not None:                           # the same packed sequence
        ends = torch.tensor(cu[1:], device=device)
        mask &= torch.searchsorted(ends, qpos, right=True) == torch.searchsorted(ends, kpos, right=True)
    return mask                                  # every query sees itself: no empty row


def _attend(q: torch.Tensor, kv: torch.Tensor, D: int, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q K^T scale, masked) V: q ``[B, L, H, D]``, kv ``[B, S, H, D + Dv]`` -> ``[B, L, H, Dv]``."""
    keys, values = kv[..., :D], kv[..., D:]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                       attn_mask=mask, scale=scale)   # (B, H, L, Dv)
    return o.transpose(1, 2)


def _reduce_scatter(stacked: torch.Tensor, ranks: comm.Ranks) -> torch.Tensor:
    """Row ``ranks.rank`` of the sum over the ranks of ``stacked`` ``[W, ...]`` (a new tensor).

    Not in ``comm``: written here with its byte count under ``comm.traffic["reduce_scatter"]``.
    Gloo before torch 2.6 or so has no reduce_scatter: an all-reduce of the whole stack stands in
    (every rank fails the same way at once, before any byte moves).
    """
    rows = [row.contiguous() for row in stacked.unbind(0)]   # gloo mishandles non-contiguous pieces
    out = torch.empty_like(rows[0])
    try:
        dist.reduce_scatter(out, rows, group=ranks.group)
        sent = (ranks.world - 1) * out.numel() * out.element_size()
    except RuntimeError as e:
        if "does not support" not in str(e):
            raise
        total = torch.stack(rows)
        dist.all_reduce(total, group=ranks.group)
        out = total[ranks.rank].clone()
        sent = 2 * (ranks.world - 1) * out.numel() * out.element_size()
    comm.traffic["reduce_scatter"] = comm.traffic.get("reduce_scatter", 0) + sent
    return out
