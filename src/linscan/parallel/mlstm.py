"""Sequence-parallel ``mlstm_scan`` (LASP-2, MATH.md section 7, mLSTM paragraph).

The steps of ``affine.py``, with a state ``(C [K, V], n [K], m)`` per (row, head) whose map
over a rank is not affine but max-plus: with lf = logsigmoid(f~) the unstabilised memory
e^m C is a scalar-decay scan and m a running max. Rank r's map is fixed by its summary
``(C_r, n_r, m_r, F_r)``: the local op's final state from ``(0, 0, -inf)`` (-inf: the identity
of max, not the m = 0 of a fresh sequence) and F_r, the sum of lf over the rank's last piece.
A state (C, n, m) entering the rank leaves it as

    m' = max(m + F_r, m_r),   C' = e^{m + F_r - m'} C + e^{m_r - m'} C_r,   n' alike     (exp gate)
    m' = 0,                   C' = e^{m + F_r} C + C_r,                     n' alike     (sigmoid gate)

(the sigmoid gate has no max-state: the single-device op folds a given m into C and n and
restarts it at 0). Every exponent of the exp gate is <= 0.

Forward (one all-gather; with ``output_final_state`` and ``cu_seqlens`` one all-reduce more):
  1. summary   (C_r, n_r, m_r, F_r) of the rank's last piece, float32 (float64), written
               out as one chunk (``_summary``) rather than by running the op   local, no graph
  2. gather    every rank's summary                                            all_gather
  3. merge     the entry state of rank r: the initial state of its first sequence passed,
               in rank order, through the maps of the ranks from the one where it started
  4. scan      the local op from the entry state: h_r and the local final states  graph kept
Backward (one all-gather, after one all-reduce of the final states' gradients when they
were returned):
  5. own       E_r = dL/d(entry state) through rank r's own outputs (a triple dC, dn, dm)
  6. gather    every rank's E_j
  7. merge     X_r = dL/d(exit state of rank r) = E_{r+1} + J_{r+1}^T X_{r+1}, down from the rank
               where the sequence ends; J_j^T is the transposed Jacobian of rank j's map at the
               state that entered it (every rank recomputes those states from the summaries):
                 dC = a X_C,  dn = a X_n,  a = e^{m + F - m'} (the scalar transition, m held fixed)
                 dm = a (<X_C, C> + <X_n, n>) + [m + F wins the max] (X_m - <X_C, C'> - <X_n, n'>)
               the last term because m' enters both weights; it makes the gradients of i, f and
               of the initial m those of the single-process op (ties shared half and half, as
               torch.maximum does; the sigmoid gate has no such term: m' is constant)
  8. local     backward of step 4 with the exit state's gradient X_r added

Gradients: each rank gets the full gradient of its own slice of q, k, v, i and f; the gradient
of ``initial_state`` row n (C, n and m) is returned in full on the rank where sequence n starts
(rank 0 without cu_seqlens) and as zeros elsewhere, so that summing over the group gives the
full gradient, as in ``affine.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..ops import checks, mlstm_scan as local_mlstm_scan
from ..ops.mlstm import _check_initial_state
from ..ops.mlstm.step import check_input_gate, log_gates
from . import comm
from .pieces import Pieces, all_pieces

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]          # (C, n, m)


def mlstm_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, *,
               input_gate: str = "exp", normalize: bool = True, initial_state: State | None = None,
               output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
               backend: str = "auto", chunk_size: int | None = None, eps: float = 1e-6, group=None):
    """``linscan.ops.mlstm_scan`` over one sequence split across the ranks of ``group``.

    Rank r passes tokens ``[r T/W, (r+1) T/W)``: q, k ``[B, T/W, H, K]``, v ``[B, T/W, H, V]``,
    i, f ``[B, T/W, H]`` (raw gate pre-activations), and gets back its slice of h
    ``[B, T/W, H, V]`` in q's dtype. Every other argument is the same on every rank and means
    what it means for the single-device op:

    - ``initial_state``: ``(C [N, H, K, V], n [N, H, K], m [N, H])``, the state before rank 0's
      first token (default zeros, m = 0 included); N = B, or the number of sequences.
    - ``cu_seqlens``: int ``[N + 1]`` global offsets of a packed batch (B == 1, ``cu[-1] == T``);
      sequences may straddle ranks.
    - ``output_final_state``: every rank gets the final state ``(C, n, m)`` of all N sequences,
      float32 (float64 for float64 inputs), m all zeros for the sigmoid gate.
    - ``input_gate``, ``normalize``, ``eps``, ``backend``, ``chunk_size``: passed to the local op.

    group: a ``torch.distributed`` process group (None: the world).

    Gradients: each rank gets the full gradient of its slice of q, k, v, i, f; ``initial_state``
    row n (C, n and m) gets its full gradient on the rank where sequence n starts and zeros
    on the others (sum over the group for the total). Bad or mismatched inputs raise the same
    error on every rank.
    """
    ranks = comm.resolve(group)

    def validate():
        stabilise = check_input_gate(input_gate)
        dims = checks.check_qkv(q, k, v)
        B, T, H = dims.B, dims.T, dims.H
        for name, x in (("i", i), ("f", f)):
            if checks.check_gate(x, name, {"B T/W H": (B, T, H)}, q.device, max_value=None) is None:
                raise TypeError(f"{name}: expected a torch.Tensor [B, T/W, H], got None")
        N = checks.check_cu_seqlens(cu_seqlens, dataclasses.replace(dims, T=T * ranks.world), q.device)
        _check_initial_state(initial_state, (N, H, dims.K, dims.V), q.device)
        checks.check_chunk_size(chunk_size)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps: expected a Python float >= 0, got {eps!r}")
        return stabilise, dims, N

    parts = initial_state if isinstance(initial_state, tuple) and len(initial_state) == 3 else (None,) * 3
    stabilise, dims, N = comm.agree(
        ranks, q.device, validate, q=q, k=k, v=v, i=i, f=f, initial_C=parts[0], initial_n=parts[1],
        initial_m=parts[2], cu_seqlens=cu_seqlens,
        cu_seqlens_values=None if cu_seqlens is None else tuple(cu_seqlens.tolist()), input_gate=input_gate,
        normalize=normalize, output_final_state=output_final_state, backend=backend, chunk_size=chunk_size,
        eps=eps)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    cu = None if cu_seqlens is None else [int(c) for c in cu_seqlens.tolist()]
    options = dict(input_gate=input_gate, normalize=bool(normalize), backend=backend, chunk_size=chunk_size,
                   eps=float(eps))
    setup = _Setup(ranks, all_pieces(cu, ranks.world, dims.T, dims.B), stabilise, dtype,
                   bool(output_final_state), options)
    h0 = initial_state
    if h0 is None:
        h0 = _zeros((N, dims.H, dims.K, dims.V), dtype, q.device, m=0.0)
    h, *final = _Lasp.apply(setup, *h0, q, k, v, i, f)
    return h, (tuple(final) if output_final_state else None)


@dataclass(frozen=True)
class _Setup:
    """What every step needs besides the tensors: the group, the pieces of every rank, the gate,
    the state dtype, whether final states are returned, and the local op's options."""

    ranks: comm.Ranks
    layout: list[Pieces]
    stabilise: bool
    dtype: torch.dtype
    output_final_state: bool
    options: dict

    @property
    def varlen(self) -> bool:
        return self.layout[0].local_cu is not None

    def local(self, inputs, state: State, cu: list[int] | None = None):
        """The local op on ``inputs`` (q, k, v, i, f) from ``state``: (h, final state)."""
        cu = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=state[0].device)
        return local_mlstm_scan(*inputs, initial_state=state, output_final_state=True, cu_seqlens=cu,
                                **self.options)


class _Lasp(torch.autograd.Function):
    """Steps 1-8 of the module docstring; inputs (setup, C0, n0, m0, q, k, v, i, f)."""

    @staticmethod
    def forward(ctx, setup, C0, n0, m0, *inputs):
        me = setup.layout[setup.ranks.rank]
        h0 = tuple(x.detach().to(setup.dtype) for x in (C0, n0, m0))
        # 1-2. the summary of the last piece, from every rank
        summaries = _gather(_summary(setup, _last_piece(inputs, me)), setup.ranks)
        # 3. the entry state
        entry = _entry_state(setup, summaries, h0, me)
        # 4. the local scan, its graph kept for steps 5 and 8
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
            entry_leaves = tuple(x.detach().requires_grad_() for x in entry)
            h, local_final = setup.local(leaves, entry_leaves, me.local_cu)
        final = _final_states(setup, summaries, h0, local_final) if setup.output_final_state \
            else (torch.zeros(0, device=h.device),) * 3
        ctx.setup, ctx.summaries, ctx.h0 = setup, summaries, h0
        ctx.graph = (h, local_final, leaves, entry_leaves)
        return (h.detach(), *final)

    @staticmethod
    def backward(ctx, d_h, *d_final):
        setup, me = ctx.setup, ctx.setup.layout[ctx.setup.ranks.rank]
        h, local_final, leaves, entry_leaves = ctx.graph
        del ctx.graph
        wanted = [x for x in leaves if x.requires_grad] + list(entry_leaves)
        d_h = torch.zeros_like(h) if d_h is None else d_h            # a rank may not use its outputs
        d_local_final = _final_grads(setup, d_final, local_final, ctx.h0)
        # 5. gradients through this rank's own outputs (all inputs, and E_r = the entry's)
        grads = _grad([h, *local_final], wanted, [d_h.contiguous(), *d_local_final], retain=me.carried_out)
        E = tuple(g[:1] if setup.varlen else g for g in grads[-3:])
        if not me.carried_in:
            E = tuple(torch.zeros_like(x) for x in E)
        # 6. every rank's E
        E_all = _gather(E, setup.ranks)
        # 7-8. the exit state's gradient, then its share of the local backward
        if me.carried_out:
            X = _exit_grad(setup, ctx.summaries, E_all, ctx.h0)
            d_exit = tuple(torch.zeros_like(x) for x in local_final)
            for d, x in zip(d_exit, X):
                d[-1 if setup.varlen else slice(None)] = x
            grads = [g + e for g, e in zip(grads, _grad(local_final, wanted, d_exit, retain=False))]
        d_entry = grads[-3:]
        d_inputs = iter(grads[:-3])
        d_inputs = [next(d_inputs) if x.requires_grad else None for x in leaves]
        # initial_state: row n in full on the rank where sequence n starts, zeros elsewhere
        d_h0 = tuple(torch.zeros_like(x) for x in ctx.h0)
        for j, n in enumerate(range(me.first, me.last + 1) if setup.varlen else [slice(None)]):
            if j > 0 or not me.carried_in:
                for d, g in zip(d_h0, d_entry):
                    d[n] = g[j] if setup.varlen else g
        return (None, *d_h0, *d_inputs)                             # None: the setup


def _entry_state(setup: _Setup, summaries, h0: State, me: Pieces) -> State:
    """Step 3: the initial states of the rank's pieces (rows first .. last; all B rows without
    cu_seqlens), the first one passed through the maps of the earlier ranks it crossed."""
    entry = tuple(x[me.first:me.last + 1].clone() for x in h0) if setup.varlen else h0
    if not me.carried_in:
        return entry
    merged = _entries(setup, summaries, _start_row(setup, h0, me.first), me.start_rank, setup.ranks.rank)[-1]
    if not setup.varlen:
        return merged
    for x, y in zip(entry, merged):
        x[0] = y
    return entry


def _zeros(shape, dtype, device, *, m: float) -> State:
    """The state (0, 0, m) for ``shape`` (N, H, K, V)."""
    N, H, K, V = shape
    like = dict(dtype=dtype, device=device)
    return torch.zeros(N, H, K, V, **like), torch.zeros(N, H, K, **like), torch.full((N, H), m, **like)


def _summary(setup: _Setup, inputs) -> tuple[torch.Tensor, ...]:
    """Step 1: (C_r, n_r, m_r, F_r) of ``inputs`` (C rows, L tokens; no graph), float32 (float64).

    The state the local op leaves when started from (0, 0, -inf), written out as one chunk:

        C_r = sum_s e^{li_s + A_s - m_r} k_s v_s^T  (n_r alike),   A_s = sum of lf over (s, L]
        m_r = max_s (li_s + A_s)  (exp gate; 0 for the sigmoid gate),   F_r = sum of lf

    rather than by running the op: the chunk backend turns an initial m = -inf into NaN (0 * -inf
    in its max-state scan). A_s is a suffix sum, not F_r minus a prefix sum (no cancellation).
    """
    _, k, v, i, f = inputs
    li, lf = log_gates(i, f, setup.options["input_gate"], setup.dtype)   # (C, L, H)
    suffix = lf.flip(1).cumsum(1).flip(1)                               # sum of lf over [s, L]
    after = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], dim=1)
    logits = li + after
    if setup.stabilise:
        m = logits.max(dim=1).values                                    # (C, H); -inf: no writes at all
        logits = logits - torch.where(m == float("-inf"), 0.0, m)[:, None]
    else:
        m = torch.zeros_like(suffix[:, 0])
    kw = k.to(setup.dtype) * logits.exp()[..., None]                   # (C, L, H, K), weights <= 1
    C = torch.einsum("clhk,clhv->chkv", kw, v.to(setup.dtype))
    return C, kw.sum(dim=1), m, suffix[:, 0]


def _merge(setup: _Setup, state: State, summary) -> State:
    """The state leaving a rank that ``state`` entered (module docstring), from its summary."""
    C, n, m = state
    C_r, n_r, m_r, F_r = summary
    m_out = torch.maximum(m + F_r, m_r) if setup.stabilise else torch.zeros_like(m)
    a, b = _weight(m + F_r, m_out), _weight(m_r, m_out)
    return a[..., None, None] * C + b[..., None, None] * C_r, a[..., None] * n + b[..., None] * n_r, m_out


def _merge_vjp(setup: _Setup, state: State, summary, X: State) -> State:
    """dL/d(state entering a rank) from X = dL/d(state leaving it): J^T X (module docstring, step 7)."""
    C, n, m = state
    _, _, m_r, F_r = summary
    C_out, n_out, m_out = _merge(setup, state, summary)
    X_C, X_n, X_m = X
    a = _weight(m + F_r, m_out)
    d_m = a * (_dot(X_C, C, 2) + _dot(X_n, n, 1))     # (unused for the sigmoid gate: its exit m is constant)
    if setup.stabilise:                                # m_out: the max of m + F and m_r, in both weights
        through = X_m - _dot(X_C, C_out, 2) - _dot(X_n, n_out, 1)
        d_m = d_m + through * torch.where(m + F_r == m_r, 0.5, (m + F_r > m_r).to(a.dtype))
    return a[..., None, None] * X_C, a[..., None] * X_n, d_m


def _weight(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """e^{x - m} (x <= m); 1 where m = -inf, so that -inf - -inf never makes a NaN."""
    return torch.where(m == float("-inf"), 0.0, x - m).exp()


def _dot(x: torch.Tensor, y: torch.Tensor, dims: int) -> torch.Tensor:
    """<x, y> over the last ``dims`` dimensions (2 for C, 1 for n)."""
    return (x * y).sum(dim=tuple(range(-dims, 0)))


def _entries(setup: _Setup, summaries, state: State, start: int, stop: int) -> list[State]:
    """The states entering ranks start .. stop: ``state``, then passed through the maps of
    ranks start .. stop - 1 in order (step 3)."""
    out = [state]
    for j in range(start, stop):
        out.append(_merge(setup, out[-1], _of_rank(setup, summaries, j)))
    return out


def _exit_grad(setup: _Setup, summaries, E_all, h0: State) -> State:
    """Step 7: dL/d(exit state of this rank's last piece).

    That state enters rank r + 1 and passes on through every following rank that lies inside
    the sequence and hands it on, up to rank e: X = E_e, then X = E_j + J_j^T X for
    j = e - 1 .. r + 1, J_j taken at the state that entered rank j.
    """
    rank, layout = setup.ranks.rank, setup.layout
    me, e = layout[rank], rank + 1
    while layout[e].single and layout[e].carried_out:
        e += 1
    start = me.start_rank if me.single else rank                 # where the last piece's sequence began
    states = _entries(setup, summaries, _start_row(setup, h0, me.last), start, e - 1)
    X = _of_rank(setup, E_all, e)
    for j in range(e - 1, rank, -1):
        back = _merge_vjp(setup, states[j - start], _of_rank(setup, summaries, j), X)
        X = tuple(own + through for own, through in zip(_of_rank(setup, E_all, j), back))
    return X


def _final_states(setup: _Setup, summaries, h0: State, local_final: State) -> State:
    """The final states of all sequences, on every rank: without cu_seqlens all end on the last
    rank (h0 through every rank's map); with it each comes from the rank where it ends."""
    if not setup.varlen:
        return _entries(setup, summaries, h0, 0, setup.ranks.world)[-1]
    final = tuple(torch.zeros_like(x) for x in h0)
    for j, n in setup.layout[setup.ranks.rank].ending():
        for x, y in zip(final, local_final):
            x[n] = y[j].detach()
    return _all_reduce(final, setup.ranks)


def _final_grads(setup: _Setup, d_final, local_final: State, h0: State) -> State:
    """The gradients of the local final states: those of the returned final states, summed
    over the ranks (every rank may have used them), at the sequences that end on this rank."""
    d_local = tuple(torch.zeros_like(x) for x in local_final)
    if not setup.output_final_state:
        return d_local
    d_final = tuple(torch.zeros_like(x) if d is None else d.to(setup.dtype) for d, x in zip(d_final, h0))
    d_final = _all_reduce(d_final, setup.ranks)                  # every rank joins
    for j, n in setup.layout[setup.ranks.rank].ending():
        for d, g in zip(d_local, d_final):
            if setup.varlen:
                d[j] = g[n]
            else:
                d.copy_(g)
    return d_local


def _grad(outputs, inputs, grads, *, retain: bool) -> list[torch.Tensor]:
    """torch.autograd.grad over the outputs that have a graph (the sigmoid gate's m has none)."""
    pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
    got = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True,
                              retain_graph=retain)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(got, inputs)]


def _pack(parts) -> torch.Tensor:
    """(C [..., K, V], n [..., K], *scalars [...]) -> one tensor [..., K V + K + len(scalars)]."""
    C, n, *scalars = parts
    return torch.cat([C.flatten(-2), n, *(s[..., None] for s in scalars)], dim=-1)


def _unpack(x: torch.Tensor, K: int, V: int) -> tuple[torch.Tensor, ...]:
    C, n, rest = x.split([K * V, K, x.shape[-1] - K * V - K], dim=-1)
    return (C.unflatten(-1, (K, V)), n, *rest.unbind(-1))


def _gather(parts, ranks: comm.Ranks) -> tuple[torch.Tensor, ...]:
    """Every rank's (C, n, m[, F]) in one all-gather, each ``[W, ...]``."""
    K, V = parts[0].shape[-2:]
    return _unpack(comm.all_gather(_pack(parts), ranks), K, V)


def _all_reduce(parts: State, ranks: comm.Ranks) -> State:
    K, V = parts[0].shape[-2:]
    return _unpack(comm.all_reduce(_pack(parts), ranks), K, V)


def _of_rank(setup: _Setup, gathered, j: int) -> tuple[torch.Tensor, ...]:
    """Rank j's entry of gathered per-rank tensors (with cu_seqlens: of its one row)."""
    return tuple(x[j][0] if setup.varlen else x[j] for x in gathered)


def _start_row(setup: _Setup, h0: State, n: int) -> State:
    """The initial state of sequence n (without cu_seqlens: all B rows)."""
    return tuple(x[n] for x in h0) if setup.varlen else h0


def _last_piece(inputs, me: Pieces):
    """The inputs restricted to the rank's last piece (the one that may go on to the next rank)."""
    if me.local_cu is None or me.count == 1:
        return inputs
    a, b = me.local_cu[-2], me.local_cu[-1]
    return [x[:, a:b] for x in inputs]


