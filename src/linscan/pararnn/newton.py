"""Newton-parallel solution of a nonlinear RNN h_t = f(h_{t-1}, x_t) (shared/MATH.md section 4).

All T states are unknowns of one system F(h)_t = h_t - f(h_{t-1}, x_t) = 0.
A Newton step linearises f around the current guess, which leaves a *linear*
recurrence for the correction, solved for all t at once by ``linear_scan``:

    1. guess      h_t = f(0, x_t)                      (h_1 = f(h0, x_1))
    2. residual   F_t = h_t - f(h_{t-1}, x_t)
    3. Jacobian   J_t = d f(h_{t-1}, x_t) / d h_{t-1}  (diagonal, k x k blocks or dense)
    4. solve      delta_t = J_t delta_{t-1} - F_t      (linear_scan, delta_0 = 0)
    5. update     h <- h + delta; repeat from 2 until max|F| < tol or max_iters
    6. fallback   (``fallback=True`` and a tol) still max|F| >= tol: the sequential loop

The backward never unrolls these iterations. At the solution the implicit
function theorem gives the adjoint as one reverse linear scan,

    lambda_t = dL/dh_t + J_{t+1}^T lambda_{t+1},

after which every gradient is local: one vector-Jacobian product of f applied
to all (h_{t-1}, x_t) pairs in parallel, weighted by lambda_t. Memory O(T D).

A cell is a :class:`~linscan.pararnn.cells.NewtonCell`: ``project(x)`` (the
h-independent part, computed once), ``transition(h, u)``, ``linearize(h, u)``
-> (f, J) with J in the layout ``linear_scan`` takes, ``structure``
("diagonal" | "block" | "dense") and ``state_size``; ``step(h, x)`` and
``jacobian(h, x)`` compose them.
"""

import math

import torch

from linscan.ops import linear_scan

__all__ = ["newton_rnn", "sequential_rnn", "fuse"]


CPU_SEGMENT = 512     # positions per Newton solve on the CPU (segment="auto")


def fuse(cell):
    """Compile ``cell.transition`` and ``cell.linearize`` with ``torch.compile``; returns the cell.

    Each Newton step evaluates the gates and the Jacobian over all B x T x M entries:
    some twenty elementwise passes over memory in eager PyTorch, one fused loop once
    compiled (on CPU 4-5x faster steps at T = 16384, see ``linscan bench rnn``). The
    first call compiles (tens of seconds; needs a C++ compiler on CPU).
    """
    cell.transition = torch.compile(cell.transition)
    cell.linearize = torch.compile(cell.linearize)
    return cell


def _scan(a, b, *, reverse=False):
    """Every linear solve goes through here (forward Newton steps and the adjoint)."""
    return linear_scan(a, b, reverse=reverse)


def _transpose(a, structure):
    return a if structure == "diagonal" else a.transpose(-1, -2)


def _previous(h, h0):
    """(h0, h_1, ..., h_{T-1}): the state each step starts from."""
    return torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)


def _initial_state(cell, x, h0):
    if h0 is not None:
        return h0
    return x.new_zeros(x.shape[0], cell.state_size)


def _check_inputs(cell, x, h0):
    """x [B, T, N] floating with N = cell.input_size (when the cell declares it) and T >= 1;
    returns the initial state [B, M] (h0, or zeros)."""
    if not torch.is_tensor(x) or x.dim() != 3:
        raise ValueError(f"x: expected a tensor [B, T, N], got {tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating dtype, got {x.dtype}")
    n = getattr(cell, "input_size", 0)
    if n and x.shape[-1] != n:
        raise ValueError(f"x: expected N = {n} features (the cell's input_size), got shape {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"x: expected T >= 1 positions, got shape {tuple(x.shape)}")
    state = _initial_state(cell, x, h0)
    if state.shape != (x.shape[0], cell.state_size):
        raise ValueError(f"h0: expected [{x.shape[0]}, {cell.state_size}], got {tuple(state.shape)}")
    return state


def sequential_rnn(cell, x, h0=None):
    """Reference: the plain loop h_t = cell.step(h_{t-1}, x_t). x [B, T, N] -> h [B, T, M]."""
    h = _check_inputs(cell, x, h0)
    out = []
    for x_t in x.unbind(1):
        h = cell.step(h, x_t)
        out.append(h)
    return torch.stack(out, dim=1)


def _solve(cell, x, h0, max_iters, tol, residuals, fallback):
    """Newton iterations (no autograd); appends max|F| of every iterate to ``residuals``.

    Returns ``(h, fell_back)``.
    """
    u = cell.project(x)                                          # h-independent part, computed once
    prev = torch.zeros(x.shape[0], x.shape[1], cell.state_size, dtype=u.dtype, device=x.device)
    prev[:, 0] = h0
    h = cell.transition(prev, u)                                 # (B, T, M) initial guess
    track = tol is not None or residuals is not None
    r = None
    for it in range(max_iters + 1):
        last = it == max_iters                                   # only its residual is reported
        if last and not track:
            break
        prev = _previous(h, h0)
        # one pass over the gates gives f and its Jacobian
        f, jac = (cell.transition(prev, u), None) if last else cell.linearize(prev, u)
        F = h - f                                                # (B, T, M)
        if track:
            r = F.abs().max().item()
            if residuals is not None:
                residuals.append(r)
            if tol is not None and r < tol:
                break
        if last:
            break
        h = h + _scan(jac, -F)
    if fallback and tol is not None and not r < tol:
        return sequential_rnn(cell, x, h0), True                 # 6. not converged: the exact loop
    return h, False


class _NewtonRNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, max_iters, tol, info, x, h0, *params):
        with torch.no_grad():
            h, info["fallback"] = _solve(cell, x, h0, max_iters, tol, info["residuals"], info["fallback"])
        ctx.cell = cell
        ctx.save_for_backward(x, h0, h)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        cell = ctx.cell
        x, h0, h = ctx.saved_tensors
        needs = ctx.needs_input_grad[4:]                         # x, h0, *params
        prev = _previous(h, h0)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(needs[0])
            u = cell.project(x_in)                               # kept for the VJP in step 2
        # 1. adjoint: one reverse scan with the transposed Jacobians J_{t+1}^T
        with torch.no_grad():
            jac = _transpose(cell.linearize(prev, u.detach())[1], cell.structure)
            # step t needs J_{t+1}^T; nothing follows the last step (its entry is never used)
            jac = torch.cat([jac[:, 1:], torch.zeros_like(jac[:, :1])], dim=1)
            lam = _scan(jac, grad_h.contiguous(), reverse=True)
        # 2. local gradients: one VJP of f over all (h_{t-1}, x_t) at once, weighted by lambda
        with torch.enable_grad():
            prev = prev.detach().requires_grad_(needs[1])
            inputs = [x_in, prev, *cell.parameters()]
            wanted = [t for t, n in zip(inputs, needs) if n]
            f = cell.transition(prev, u)
            grads = iter(torch.autograd.grad(f, wanted, lam, allow_unused=True) if wanted else ())
        result = [next(grads) if n else None for n in needs]
        if result[1] is not None:
            result[1] = result[1][:, 0]                          # J_1^T lambda_1
        # cell, max_iters, tol, info are not tensors: no gradient
        return (None, None, None, None, *result)


def newton_rnn(cell, x, h0=None, *, max_iters=3, tol=None, fallback=False, segment="auto",
               return_info=False):
    """Solve h_t = cell.step(h_{t-1}, x_t) for all t at once by Newton iterations.

    Args:
        cell: a ``NewtonCell`` (``project``, ``transition``, ``linearize``,
            ``structure``, ``state_size`` M), e.g. ParaGRU, ParaLSTMCIFG, ALRNN.
        x: inputs [B, T, N].
        h0: initial state [B, M]; zeros when None.
        max_iters: Newton steps at most (3 usually suffice for contractive cells;
            after k steps the first k states are exact whatever the cell).
        tol: stop once max|F(h)| < tol (None: always take max_iters steps).
        fallback: with a tol, when max|F| is still >= tol after max_iters steps, solve
            by the sequential loop instead (exact; slow for long T, reported in the info).
        segment: solve ``segment`` positions at a time, each segment starting from the
            previous one's last state (None: all T at once). On a CPU the Newton steps are
            memory-bound elementwise passes: segments that stay in cache make them 2-4x
            faster, and a CPU has no parallelism across time to lose. ``"auto"``: None on
            CUDA, ``CPU_SEGMENT`` positions on the CPU.
        return_info: also return ``{"residuals": [max|F| of each iterate,
            starting with the initial guess; the max over segments], "iters": Newton
            steps taken (the most of any segment), "fallback": whether the sequential
            loop gave any segment's result}``.

    Returns:
        h [B, T, M], all states h_1..h_T (and the info dict when asked).
        Differentiable w.r.t. x, h0 and the cell's parameters through the
        adjoint (one reverse ``linear_scan``), never through the iterations.
    """
    state = _check_inputs(cell, x, h0)
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters: expected a positive int, got {max_iters!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and 0 < tol < math.inf):
        raise ValueError(f"tol: expected None or a positive finite number, got {tol!r}")
    if fallback and tol is None:
        raise ValueError("fallback: expected a tol as well (the sequential loop replaces a solve whose residual "
                         "stays >= tol), got fallback=True with tol=None")
    if segment == "auto":
        segment = None if x.device.type == "cuda" else CPU_SEGMENT
    if segment is not None and (not isinstance(segment, int) or segment < 1):
        raise ValueError(f"segment: expected None, \"auto\" or a positive int, got {segment!r}")
    pieces, infos = [], []
    for x_seg in (x.split(segment, dim=1) if segment and segment < x.shape[1] else [x]):
        info = {"residuals": [] if return_info else None, "fallback": fallback}
        h = _NewtonRNN.apply(cell, max_iters, tol, info, x_seg, state, *cell.parameters())
        pieces.append(h)
        infos.append(info)
        state = h[:, -1]                                         # the next segment starts here
    h = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
    if not return_info:
        return h
    n = max(len(i["residuals"]) for i in infos)
    residuals = [max(i["residuals"][min(j, len(i["residuals"]) - 1)] for i in infos) for j in range(n)]
    return h, {"residuals": residuals, "iters": n - 1, "fallback": any(i["fallback"] for i in infos)}
