"""pLSTM (Poeppel et al. 2025): linear LSTM recurrences on 1-D sequences and 2-D grids (MATH.md 8.2).

    from linscan.ops.grid.plstm import plstm1d, plstm2d

Two families, each with a cell/token loop ("naive", the reference) and a fast
backend built on :func:`linscan.ops.linear_scan` ("sweep", differentiable,
what ``backend="auto"`` picks on a CPU):

    1-D, token t:    C_t  = T_t C_{t-1} + S_t k_t v_t^T
                     o_t  = s [M_t C_{t-1}^T q_t + E_t (q_t . k_t) v_t]
    2-D, cell (i, j), edge states R_ij -> (i+1, j) and D_ij -> (i, j+1), zero at the border:
                     R_ij = T^rl R_{i-1,j} + T^ru D_{i,j-1} + S^r k_ij v_ij^T
                     D_ij = T^dl R_{i-1,j} + T^du D_{i,j-1} + S^d k_ij v_ij^T
                     o_ij = s [(M^l R_{i-1,j} + M^u D_{i,j-1})^T q_ij + E_ij (q_ij . k_ij) v_ij]

Gate superscripts name (outgoing, incoming) edges: r / d the outgoing R / D
state, l the incoming R_{i-1,j} (from the previous cell along i), u the
incoming D_{i,j-1} (from the previous cell along j).
"""

from __future__ import annotations

import torch

from ... import checks, registry
from . import naive, sweep, tile  # noqa: F401  (register the backends)

MODES = ("P", "D")
ORIENTATIONS = {0: "(0, 0)", 1: "(X-1, 0)", 2: "(0, Y-1)", 3: "(X-1, Y-1)"}
T_DL = 2                    # channel of T^dl in T [..., 4] = (T^rl, T^ru, T^dl, T^du)


def plstm2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, S: torch.Tensor, T: torch.Tensor,
            M: torch.Tensor, E: torch.Tensor, *, scale: float | None = None, mode: str = "P",
            orientation: int = 0, normalize: bool = True, backend: str = "auto") -> torch.Tensor:
    """pLSTM on a 2-D grid of X x Y cells (module docstring; MATH.md 8.2).

    Args:
        q, k: ``[B, X, Y, H, K]``; v: ``[B, X, Y, H, V]`` (same dtype and device).
        S: sources ``[B, X, Y, H, 2]`` = (S^r, S^d): how much of the cell's k v^T enters the
            outgoing R (along i) and D (along j) states.
        T: transitions ``[B, X, Y, H, 4]`` = (T^rl, T^ru, T^dl, T^du): T^ab carries the incoming
            state b (l: R_{i-1,j}, u: D_{i,j-1}) into the outgoing state a (r: R_ij, d: D_ij).
        M: marks ``[B, X, Y, H, 2]`` = (M^l, M^u): the weights of the two incoming states in the
            output (marks read the incoming states, not the cell's own write).
        E: direct term ``[B, X, Y, H]``: the weight of the cell's own ``(q . k) v``.
            Gates may have any floating dtype; they are computed in the state dtype.
        scale: s, multiplies the output; default ``1 / sqrt(K)``.
        mode: ``"P"`` (propagation, default): with ``normalize`` each incoming edge's outgoing
            transitions are rescaled, ``T <- T / max(1, sum_out |T|)`` (sum_out over T^r., T^d.
            of one incoming edge: |T^rl| + |T^dl| and |T^ru| + |T^du|), so no path sum can grow;
            transitions that already satisfy the bound pass unchanged. ``"D"`` (diffusion): the
            multitree of chirality L, D_ij depends on D only and each pair of cells has one path
            (along j, one turn, then along i); T^dl must be 0 and every ``|T| <= 1``: both are
            validated (``ValueError``), nothing is clamped. ``normalize`` is not used in D-mode.
        orientation: the corner the sweep starts from, 0: (0, 0), 1: (X-1, 0), 2: (0, Y-1),
            3: (X-1, Y-1). Bit 0 flips the X axis, bit 1 the Y axis, of every input and of the
            output: ``plstm2d(x, orientation=o) == flip(plstm2d(flip(x), orientation=0))``.
            Gates stay attached to their cells; "i-1" then means the previous cell in sweep order.
        normalize: P-mode only; False takes T as given (the raw path sums of MATH.md, e.g.
            C(n, r) lattice paths for all-ones T: they explode).
        backend: ``"auto"``, ``"naive"``, ``"sweep"`` (see ``linscan.ops.available()``).

    Returns:
        o ``[B, X, Y, H, V]`` in q's dtype. States are computed in float32 (float64 for float64
        inputs) and not returned.
    """
    scale = check_plstm2d(q, k, v, S, T, M, E, scale=scale, mode=mode, orientation=orientation,
                          normalize=normalize)
    if mode == "P" and normalize:
        T = normalize_transitions(T)
    fn = registry.get("plstm2d", backend, q.device)
    return fn(q, k, v, S, T, M, E, scale=scale, mode=mode, orientation=orientation)


def plstm1d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, S: torch.Tensor, T: torch.Tensor,
            M: torch.Tensor, E: torch.Tensor, *, scale: float | None = None,
            backend: str = "auto") -> torch.Tensor:
    """pLSTM on a sequence (module docstring; MATH.md 8.2).

        C_t = T_t C_{t-1} + S_t k_t v_t^T,     o_t = s [M_t C_{t-1}^T q_t + E_t (q_t . k_t) v_t]

    Args:
        q, k: ``[B, L, H, K]``; v: ``[B, L, H, V]`` (same dtype and device).
        S, T, M, E: scalar gates per head and token ``[B, L, H]``: source, transition (may be
            negative, e.g. tanh: the scan is signed, not a log-space decay), mark (reads
            C_{t-1}), direct term. Taken as given (no normalisation).
        scale: s; default ``1 / sqrt(K)``.
        backend: ``"auto"``, ``"naive"``, ``"sweep"``.

    Returns:
        o ``[B, L, H, V]`` in q's dtype (states in float32, float64 for float64 inputs).
    """
    dims = _check_qkv(q, k, v, "B L H")
    for name, x in (("S", S), ("T", T), ("M", M), ("E", E)):
        _check_gate(x, name, "B L H", dims[:3], q.device)
    scale = checks.check_scale(scale, dims[3])
    fn = registry.get("plstm1d", backend, q.device)
    return fn(q, k, v, S, T, M, E, scale=scale)


def normalize_transitions(T: torch.Tensor) -> torch.Tensor:
    """P-mode's bound, ``T <- T / max(1, sum_out |T|)`` per incoming edge, on ``T [..., 4]``.

    Incoming l feeds (T^rl, T^dl), incoming u feeds (T^ru, T^du). The graph code of the paper
    divides by ``0.5 + sum_out |T|`` instead, which also shrinks transitions that are already
    within the bound (by 2/3 at sum 1); this form leaves them exact (MATH.md's closed forms).
    """
    rl, ru, dl, du = T.unbind(-1)
    out_l, out_u = rl.abs() + dl.abs(), ru.abs() + du.abs()
    return T / torch.stack((out_l, out_u, out_l, out_u), dim=-1).clamp_min(1.0)


def check_plstm2d(q, k, v, S, T, M, E, *, scale, mode, orientation, normalize) -> float:
    """``plstm2d``'s checks; returns the scale."""
    B, X, Y, H, K, _ = _check_qkv(q, k, v, "B X Y H")
    for name, x, n in (("S", S, 2), ("T", T, 4), ("M", M, 2)):
        _check_gate(x, name, f"B X Y H {n}", (B, X, Y, H, n), q.device)
    _check_gate(E, "E", "B X Y H", (B, X, Y, H), q.device)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode: expected 'P' or 'D', got {mode!r}")
    if isinstance(orientation, bool) or not isinstance(orientation, int) or orientation not in ORIENTATIONS:
        raise ValueError(f"orientation: expected an int in 0..3 (the start corner, "
                         f"{', '.join(f'{o}: {c}' for o, c in ORIENTATIONS.items())}), got {orientation!r}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
    if mode == "D":
        _check_multitree(T)
    return checks.check_scale(scale, K)


def _check_multitree(T: torch.Tensor) -> None:
    """D-mode: T^dl == 0 (chirality L) and |T| <= 1; NaN passes (it propagates to o)."""
    t_dl = T[..., T_DL].detach()
    if bool((t_dl.abs() > 0).any()):
        raise ValueError(f"T: expected T[..., {T_DL}] (T^dl) == 0 in mode 'D' (chirality L: D depends "
                         f"on D only), got max |T^dl| = {t_dl.abs().nan_to_num(0.0).max().item():g}")
    checks.check_range(T, "T", -1.0, 1.0)


def _check_qkv(q, k, v, axes: str) -> tuple[int, ...]:
    """q, k ``[*axes, K]``, v ``[*axes, V]``; returns the sizes ``(*axes, K, V)``."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        checks.expect_floating(x, name)
    checks.expect_rank(q, "q", f"{axes} K")
    lead, K = tuple(q.shape[:-1]), q.shape[-1]
    checks.expect_shape(k, "k", f"{axes} K", (*lead, K))
    checks.expect_rank(v, "v", f"{axes} V")
    checks.expect_shape(v, "v", f"{axes} V", (*lead, v.shape[-1]))
    for name, x in (("k", k), ("v", v)):
        checks.expect_same_dtype(x, name, q)
        checks.expect_device(x, name, q.device)
    if q.numel() == 0 or v.numel() == 0:
        raise ValueError(f"q, k, v: expected non-empty axes, got q {list(q.shape)}, v {list(v.shape)}")
    return (*lead, K, v.shape[-1])


def _check_gate(x, name: str, symbols: str, sizes: tuple[int, ...], device: torch.device) -> None:
    checks.expect_floating(x, name)
    checks.expect_shape(x, name, symbols, sizes)
    checks.expect_device(x, name, device)


__all__ = ["plstm1d", "plstm2d", "normalize_transitions"]
