"""LASP-2 for the scans whose state moves by an affine map: decay_scan and delta_scan.

Rank r holds tokens ``[r L, (r + 1) L)``; over them a sequence's state moves by the affine
map ``S -> A_r S + B_r`` (MATH.md section 7): ``B_r`` is the local final state from 0 and
``A_r`` the product of the rank's transitions (decay_scan: diagonal, ``exp(sum g)``;
delta_scan: dense K x K). With packed sequences (``cu_seqlens``) the map is that of the
rank's last piece, the one that may go on to the next rank (``pieces.py``).

Forward (one all-gather; with cu_seqlens and output_final_state one all-reduce more, for the
final states of the sequences, which end on different ranks):
  1. summary   (A_r, B_r) of the rank's last piece, fp32                  local, no graph
  2. gather    every rank's (A_j, B_j)                                    all_gather
  3. merge     entry state H_r = A_{r-1}(...(A_s h0 + B_s)...) + B_{r-1}  in rank order from s,
               the rank where the sequence started
  4. scan      the local op from H_r: o_r and the local final states      graph kept
Backward (one all-gather, after one all-reduce of the final states' gradients when they
were returned):
  5. own       E_r = dL/dH_r through rank r's own outputs (o_r and the final states of the
               sequences that end on rank r); it does not depend on H_r (o is linear in it)
  6. gather    every rank's E_j
  7. merge     X_r = dL/d(exit state of rank r) = E_{r+1} + A_{r+1}^T X_{r+1}, from the rank
               where the sequence ends down (the A^T term only for ranks inside the sequence)
  8. local     backward of step 4 with the exit state's gradient X_r added

Gradients: each rank gets the full gradient of its own slice of every input (the loss being
the sum of all ranks' losses). The gradient of ``initial_state`` row n is returned in full on
the rank where sequence n starts (rank 0 without cu_seqlens) and as zeros elsewhere, so that
summing over the group (as data-parallel gradient reduction does) gives the full gradient.
Steps 5 and 8 each run the local op's backward (step 8 only on ranks whose last sequence goes
on): the backward costs about two local ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import comm
from .pieces import Pieces, all_pieces


@dataclass
class Family:
    """How one scan family plugs into the merge.

    run(inputs, initial_state, cu_seqlens) -> (o, final): the local op with
        output_final_state=True, differentiable.
    summary(inputs) -> (A, B) of the whole given slice: A ``[C, H, K]`` (diagonal) or
        ``[C, H, K, K]`` (dense), B ``[C, H, K, V]``; C = batch rows; float32 (float64 for float64).
    dense: whether A is a full matrix.
    slice_time(inputs, a, b) -> the inputs restricted to local tokens [a, b) (B == 1).
    """

    run: Callable
    summary: Callable
    dense: bool
    slice_time: Callable

    def apply(self, A: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        return A @ S if self.dense else A[..., None] * S

    def apply_t(self, A: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        return A.mT @ S if self.dense else A[..., None] * S


def lasp(family: Family, inputs: list, *, initial_state, output_final_state: bool, cu_seqlens,
         ranks: comm.Ranks, state_shape: tuple[int, ...], state_dtype: torch.dtype):
    """Run ``family`` sequence-parallel; returns (o, final state or None) like the single-device op.

    inputs: the family's tensors (rank-local slices, time at dim 1; None allowed).
    state_shape: ``(H, K, V)``; state_dtype: float32, or float64 for float64 inputs.
    """
    L, B = inputs[0].shape[1], inputs[0].shape[0]
    cu = None if cu_seqlens is None else [int(c) for c in cu_seqlens.tolist()]
    layout = all_pieces(cu, ranks.world, L, B)
    h0 = initial_state
    if h0 is None:
        rows = B if cu is None else len(cu) - 1
        h0 = torch.zeros(rows, *state_shape, dtype=state_dtype, device=inputs[0].device)
    o, finals = _Lasp.apply(family, ranks, layout, output_final_state, h0, *inputs)
    return o, (finals if output_final_state else None)


class _Lasp(torch.autograd.Function):
    """Steps 1-8 of the module docstring."""

    @staticmethod
    def forward(ctx, family, ranks, layout, output_final_state, h0, *inputs):
        me, varlen = layout[ranks.rank], layout[0].local_cu is not None
        h0 = h0.detach().to(torch.float64 if h0.dtype == torch.float64 else torch.float32)
        # 1. summary of the last piece
        A, B = family.summary(_last_piece(family, inputs, me))
        # 2. one all-gather of every rank's (A | B)
        A_all, B_all = _gather_summaries(ranks, A, B, family.dense)
        # 3. merge: the entry state of the first piece; the other pieces start from their initial states
        entry = h0[me.first:me.last + 1].clone() if varlen else h0.clone()   # (pieces | B, H, K, V)
        if me.carried_in:
            H = _fold(family, A_all, B_all, _start(h0, me, varlen), me.start_rank, ranks.rank, varlen)
            if varlen:
                entry[0] = H
            else:
                entry = H
        # 4. the local scan, its graph kept for steps 5 and 8
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(x.requires_grad) if torch.is_tensor(x) else x for x in inputs]
            entry_leaf = entry.detach().requires_grad_()
            cu_local = None if not varlen else torch.tensor(me.local_cu, dtype=torch.int32, device=h0.device)
            o, local_final = family.run(leaves, entry_leaf, cu_local)
        finals = torch.zeros(0, device=h0.device)
        if output_final_state:
            if varlen:                                            # sequences end on different ranks
                finals = torch.zeros_like(h0)
                for j, n in me.ending():
                    finals[n] = local_final[j].detach()
                finals = comm.all_reduce(finals, ranks)
            else:                                                 # all end on the last rank: fold every rank
                finals = _fold(family, A_all, B_all, h0, 0, ranks.world, varlen)
        ctx.family, ctx.ranks, ctx.layout, ctx.varlen = family, ranks, layout, varlen
        ctx.graph = (o, local_final, leaves, entry_leaf, A_all)
        ctx.output_final_state, ctx.h0_shape = output_final_state, h0.shape
        return o.detach(), finals

    @staticmethod
    def backward(ctx, d_o, d_finals):
        family, ranks, layout, varlen = ctx.family, ctx.ranks, ctx.layout, ctx.varlen
        me = layout[ranks.rank]
        o, local_final, leaves, entry_leaf, A_all = ctx.graph
        del ctx.graph
        wanted = [x for x in leaves if torch.is_tensor(x) and x.requires_grad] + [entry_leaf]
        # the final states' gradients, summed over the ranks (every rank may have used them)
        d_o = torch.zeros_like(o) if d_o is None else d_o          # a rank may not use its outputs
        d_local_final = torch.zeros_like(local_final)
        if ctx.output_final_state:                                # every rank joins the all-reduce
            d_finals = torch.zeros(ctx.h0_shape, dtype=local_final.dtype, device=local_final.device) \
                if d_finals is None else d_finals
            d_finals = comm.all_reduce(d_finals.to(local_final.dtype), ranks)
            for j, n in me.ending():
                if varlen:
                    d_local_final[j] = d_finals[n]
                else:
                    d_local_final = d_finals
        # 5. gradients through this rank's own outputs (all inputs, and E_r = the entry's)
        grads = torch.autograd.grad([o, local_final], wanted, [d_o.contiguous(), d_local_final],
                                    allow_unused=True, retain_graph=me.carried_out)
        grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wanted)]
        E = grads[-1][:1] if varlen else grads[-1]
        if not me.carried_in:
            E = torch.zeros_like(E)
        # 6. every rank's E
        E_all = comm.all_gather(E, ranks)
        # 7-8. the exit state's gradient, then its share of the local backward
        if me.carried_out:
            X = _exit_grad(family, layout, A_all, E_all, ranks.rank, varlen)
            d_exit = torch.zeros_like(local_final)
            if varlen:
                d_exit[-1] = X[0]
            else:
                d_exit = X
            extra = torch.autograd.grad(local_final, wanted, d_exit, allow_unused=True)
            grads = [g if e is None else g + e for g, e in zip(grads, extra)]
        d_entry = grads.pop()
        d_inputs = [grads.pop(0) if torch.is_tensor(x) and x.requires_grad else None for x in leaves]
        # initial_state: row n in full on the rank where sequence n starts, zeros elsewhere
        d_h0 = torch.zeros(ctx.h0_shape, dtype=d_entry.dtype, device=d_entry.device)
        if not varlen:
            if not me.carried_in:
                d_h0 = d_entry
        else:
            for j, n in enumerate(range(me.first, me.last + 1)):
                if j > 0 or not me.carried_in:
                    d_h0[n] = d_entry[j]
        return (None, None, None, None, d_h0, *d_inputs)



def _start(h0, me: Pieces, varlen: bool):
    return h0[me.first] if varlen else h0


def _last_piece(family: Family, inputs: list, me: Pieces) -> list:
    if me.local_cu is None or me.count == 1:
        return inputs
    return family.slice_time(inputs, me.local_cu[-2], me.local_cu[-1])


def _gather_summaries(ranks, A, B, dense):
    """One all-gather of (A | B): ``[W, C, H, K, K + V]`` (dense) or ``[W, C, H, K, 1 + V]``."""
    packed = torch.cat([A if dense else A[..., None], B], dim=-1)
    gathered = comm.all_gather(packed, ranks)
    split = A.shape[-1] if dense else 1
    A_all = gathered[..., :split] if dense else gathered[..., 0]
    return A_all, gathered[..., split:]


def _fold(family, A_all, B_all, H, start, stop, varlen):
    """Step 3: H folded through the maps of ranks start .. stop-1, in order."""
    for j in range(start, stop):
        A, B = (A_all[j][0], B_all[j][0]) if varlen else (A_all[j], B_all[j])
        H = family.apply(A, H) + B
    return H


def _exit_grad(family, layout: list[Pieces], A_all, E_all, rank: int, varlen: bool):
    """Step 7: dL/d(exit state of rank ``rank``'s last piece).

    The state leaving rank r enters rank r + 1; it passes on through every following rank that
    lies inside the sequence and hands it on (single piece, carried out), up to rank e.
    X = E_e, then X = E_m + A_m^T X for m = e - 1 .. r + 1.
    """
    e = rank + 1
    while layout[e].single and layout[e].carried_out:
        e += 1
    X = E_all[e]
    for m in range(e - 1, rank, -1):
        X = E_all[m] + family.apply_t(A_all[m][0] if varlen else A_all[m], X)
    return X

