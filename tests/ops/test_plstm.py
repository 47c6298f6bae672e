"""pLSTM ops (MATH.md 8.2): the fast backends (sweep, tile) vs the float64 cell loop (outputs and
gradients of every input), the closed-form path sums, the 1-D reductions, orientations and
validation."""

from math import comb

import pytest
import torch

from linscan.ops import available, decay_scan, resolve
from linscan.ops.grid.plstm import normalize_transitions, plstm1d, plstm2d, tile

TOL = dict(rtol=1e-10, atol=1e-10)
GRIDS = [(1, 1), (1, 7), (5, 3), (6, 7)]
FAST = ["sweep", "tile"]
NAMES = ("q", "k", "v", "S", "T", "M", "E")


def grid_inputs(X, Y, mode="P", *, B=2, H=2, K=3, V=2, seed=0, dtype=torch.float64):
    """Random inputs; P-mode T is unbounded (the normaliser is active), D-mode T in (-1, 1), T^dl = 0."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(B, X, Y, H, *shape, generator=gen, dtype=torch.float64)

    T = 1.5 * rand(4)
    if mode == "D":
        T = torch.tanh(T) * torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    x = dict(q=rand(K), k=rand(K), v=rand(V), S=torch.sigmoid(rand(2)), T=T, M=rand(2), E=rand())
    return {n: t.to(dtype) for n, t in x.items()}


def forward_backward(op, inputs, **options):
    """o and the gradient of every input under a fixed random projection of o."""
    x = {n: t.detach().clone().requires_grad_(True) for n, t in inputs.items()}
    o = op(**x, **options)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=o.dtype)
    (o * w).sum().backward()
    # an input no output depends on (the last state's write) has no graph in the loop: zero
    return o.detach(), {n: torch.zeros_like(t) if t.grad is None else t.grad for n, t in x.items()}


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("orientation", [0, 1, 2, 3])
@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("X, Y", GRIDS)
def test_fast_matches_naive_with_gradients(X, Y, mode, orientation, backend):
    inputs = grid_inputs(X, Y, mode, seed=10 * X + Y, B=1 if X * Y > 20 else 2)
    o_ref, g_ref = forward_backward(plstm2d, inputs, mode=mode, orientation=orientation, backend="naive")
    o, g = forward_backward(plstm2d, inputs, mode=mode, orientation=orientation, backend=backend)
    torch.testing.assert_close(o, o_ref, **TOL)
    assert o_ref.norm() > 0
    for name in NAMES:
        torch.testing.assert_close(g[name], g_ref[name], **TOL, msg=lambda m: f"grad {name}: {m}")
        if X * Y > 1 or name in "q k v E":        # one cell: no edge state is ever read
            assert g_ref[name].norm() > 0, name


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("X, Y", [(70, 2), (2, 37)])
def test_sweep_matches_naive_across_scan_chunks(X, Y, mode):
    """Lines longer than the sweep's transfer-matrix chunk (sweep.CHUNK = 32): chunks chained."""
    inputs = grid_inputs(X, Y, mode, seed=X + Y, B=1, H=1, K=2, V=1)
    o_ref, g_ref = forward_backward(plstm2d, inputs, mode=mode, backend="naive")
    o, g = forward_backward(plstm2d, inputs, mode=mode, backend="sweep")
    torch.testing.assert_close(o, o_ref, **TOL)
    for name in NAMES:
        torch.testing.assert_close(g[name], g_ref[name], **TOL, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("X, Y, c", [(9, 17, 4), (13, 6, 4), (8, 8, 2), (7, 11, 3)])
def test_tile_matches_naive_across_tiles(X, Y, c, mode, monkeypatch):
    """Several tiles per axis, partial tiles at both ends, every anti-diagonal shape: the states
    crossing tile borders, the tile-level recurrence and the padding."""
    monkeypatch.setattr(tile, "TILE", c)
    inputs = grid_inputs(X, Y, mode, seed=X * Y + c, B=1, H=2, K=2, V=3)
    o_ref, g_ref = forward_backward(plstm2d, inputs, mode=mode, orientation=3, backend="naive")
    o, g = forward_backward(plstm2d, inputs, mode=mode, orientation=3, backend="tile")
    torch.testing.assert_close(o, o_ref, **TOL)
    for name in NAMES:
        torch.testing.assert_close(g[name], g_ref[name], **TOL, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("orientation", [1, 2, 3])
@pytest.mark.parametrize("mode", ["P", "D"])
def test_orientation_flips_inputs_and_output(mode, orientation):
    # the cell loop walks the grid from the other corner; the definition is a flip of every axis
    inputs = grid_inputs(4, 5, mode, seed=3)
    flips = [axis for bit, axis in ((1, 1), (2, 2)) if orientation & bit]
    o = plstm2d(**inputs, mode=mode, orientation=orientation, backend="naive")
    o_flip = plstm2d(**{n: x.flip(flips) for n, x in inputs.items()}, mode=mode, backend="naive")
    torch.testing.assert_close(o, o_flip.flip(flips), **TOL)
    assert (o - plstm2d(**inputs, mode=mode, backend="naive")).norm() > 1e-3 * o.norm()


# ---- closed forms: the kernel G ---------------------------------------------------------------
# With K = V = H = B = 1, q = k = 1, scale = 1 and v one-hot at the source cell (a, b),
# o_ij = sum_ab G_{ij,ab} (q_ij . k_ab) v_ab is exactly G_{ij,ab}: one forward reads the whole
# column of the kernel for that source.

def kernel(S, T, M, E, source, **options):
    """G[i, j] = G_{ij,ab} for constant gates S [2], T [4], M [2], E (floats) on a 6 x 7 grid."""
    X, Y = 6, 7
    cell = (1, X, Y, 1)
    v = torch.zeros(*cell, 1, dtype=torch.float64)
    v[0, source[0], source[1]] = 1.0
    ones = torch.ones(*cell, 1, dtype=torch.float64)

    def const(values):
        return torch.tensor(values, dtype=torch.float64).expand(*cell, len(values)).clone()

    o = plstm2d(ones, ones, v, const(S), const(T), const(M), const([E])[..., 0], scale=1.0, **options)
    return o[0, :, :, 0, 0]


def expected_kernel(per_offset, source, E):
    """G from a closed form in the offsets (r, c) = (i - a, j - b); 0 where the target precedes."""
    a, b = source
    G = torch.zeros(6, 7, dtype=torch.float64)
    for i in range(a, 6):
        for j in range(b, 7):
            G[i, j] = E if (i, j) == (a, b) else per_offset(i - a, j - b)
    return G


@pytest.mark.parametrize("backend", ["naive", *FAST])
@pytest.mark.parametrize("source", [(0, 0), (1, 2)])
def test_p_mode_constant_split_is_binomial(backend, source):
    # default options: normalize=True leaves an exact split (sum_out |T| = 1) unchanged
    p = 0.3
    G = kernel([p, 1 - p], [p, p, 1 - p, 1 - p], [1, 1], 0.7, source, backend=backend)
    want = expected_kernel(lambda r, c: comb(r + c, r) * p ** r * (1 - p) ** c, source, 0.7)
    torch.testing.assert_close(G, want, **TOL)


@pytest.mark.parametrize("backend", ["naive", *FAST])
@pytest.mark.parametrize("source", [(0, 0), (1, 2)])
def test_d_mode_single_path(backend, source):
    lam = 0.8

    def one_path(r, c):                 # lambda^(n-1): one turn inside, or straight along one axis
        return lam ** (r + c - 1)

    G = kernel([1, 1], [lam, lam, 0, lam], [1, 1], 0.0, source, mode="D", backend=backend)
    torch.testing.assert_close(G, expected_kernel(one_path, source, 0.0), **TOL)


@pytest.mark.parametrize("backend", ["naive", *FAST])
def test_unnormalised_all_ones_counts_lattice_paths(backend):
    G = kernel([1, 1], [1, 1, 1, 1], [1, 1], 0.0, (0, 0), normalize=False, backend=backend)
    torch.testing.assert_close(G, expected_kernel(lambda r, c: comb(r + c, r), (0, 0), 0.0), **TOL)
    assert G[5, 6].item() == pytest.approx(462.0, abs=1e-9)


@pytest.mark.parametrize("backend", ["naive", *FAST])
def test_normaliser_is_on_by_default(backend):
    # regression: all-ones T must not explode; each T becomes 1/2, so G = C(n, r) / 2^(n-1) <= 1
    G = kernel([1, 1], [1, 1, 1, 1], [1, 1], 0.0, (0, 0), backend=backend)
    assert G[5, 6].item() == pytest.approx(462.0 / 2 ** 10, abs=1e-12)
    assert G.max().item() <= 1.0


def test_normalize_transitions_bounds_and_keeps_valid():
    T = 3 * torch.randn(5, 4, dtype=torch.float64)
    Tn = normalize_transitions(T)
    assert (Tn[:, 0].abs() + Tn[:, 2].abs()).max() <= 1 + 1e-12      # incoming l: T^rl, T^dl
    assert (Tn[:, 1].abs() + Tn[:, 3].abs()).max() <= 1 + 1e-12      # incoming u: T^ru, T^du
    valid = torch.tensor([[0.2, -0.5, 0.7, 0.5], [0.0, 0.1, -0.3, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(normalize_transitions(valid), valid, rtol=0, atol=0)


# ---- 1-D ----------------------------------------------------------------------------------------

def seq_inputs(L, *, B=2, H=2, K=3, V=2, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(B, L, H, *shape, generator=gen, dtype=torch.float64)

    return dict(q=rand(K), k=rand(K), v=rand(V), S=rand(), T=torch.tanh(2 * rand()), M=rand(), E=rand())


@pytest.mark.parametrize("L", [1, 7])
def test_plstm1d_sweep_matches_naive_with_gradients(L):
    inputs = seq_inputs(L, seed=L)
    o_ref, g_ref = forward_backward(plstm1d, inputs, backend="naive")
    o, g = forward_backward(plstm1d, inputs, backend="sweep")
    torch.testing.assert_close(o, o_ref, **TOL)
    for name in NAMES:
        torch.testing.assert_close(g[name], g_ref[name], **TOL, msg=lambda m: f"grad {name}: {m}")
        if L > 1 or name in "q k v E":            # one token: C_0 = 0 and C_1 is never read
            assert g_ref[name].norm() > 0, name


@pytest.mark.parametrize("backend", ["naive", "sweep"])
def test_plstm1d_is_decay_scan(backend):
    # S = 1, T = M = a, E = 1: o_t = s [a_t C_{t-1} + k_t v_t^T]^T q_t = s C_t^T q_t, and C_t is
    # decay_scan's S_t = a_t S_{t-1} + k_t v_t^T: the mark on C_{t-1} and the direct term
    # together are decay_scan's read of the state after the current token.
    x = seq_inputs(7, seed=5)
    gen = torch.Generator().manual_seed(6)
    a = 0.05 + 0.9 * torch.rand(x["S"].shape, generator=gen, dtype=torch.float64)
    one = torch.ones_like(a)
    o = plstm1d(x["q"], x["k"], x["v"], one, a, a, one, backend=backend)
    o_ref, _ = decay_scan(x["q"], x["k"], x["v"], a.log(), backend="naive")
    torch.testing.assert_close(o, o_ref, **TOL)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("axis", ["X", "Y"])
def test_plstm2d_on_a_line_is_plstm1d(axis, mode, backend):
    # Y = 1: only R runs (D_{i,-1} = 0), gates (S^r, T^rl, M^l); X = 1: only D, gates (S^d, T^du, M^u)
    g = grid_inputs(6, 1, mode, seed=7) if axis == "X" else grid_inputs(1, 6, mode, seed=7)
    line = 2 if axis == "X" else 1                       # the grid axis of length 1
    s, t, m = (0, 0, 0) if axis == "X" else (1, 3, 1)
    o = plstm2d(**g, mode=mode, normalize=False, backend=backend).squeeze(line)
    o_1d = plstm1d(*(g[n].squeeze(line) for n in ("q", "k", "v")), g["S"][..., s].squeeze(line),
                   g["T"][..., t].squeeze(line), g["M"][..., m].squeeze(line), g["E"].squeeze(line),
                   backend="naive")
    torch.testing.assert_close(o, o_1d, **TOL)


# ---- dtypes, registry, validation -------------------------------------------------------------

def test_float32_output_dtype_and_accuracy():
    x64 = grid_inputs(3, 4, seed=2)
    o = plstm2d(**{n: t.float() for n, t in x64.items()})
    assert o.dtype == torch.float32
    ref = plstm2d(**x64, backend="naive")
    assert ((o.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_registry_lists_backends_and_auto_is_tile(monkeypatch):
    monkeypatch.delenv("LINSCAN_BACKEND", raising=False)
    assert available()["plstm2d"] == ["naive", "sweep", "tile"]
    assert available()["plstm1d"] == ["naive", "sweep"]
    assert resolve("plstm2d", "auto", "cpu") == "tile"
    assert resolve("plstm1d", "auto", "cpu") == "sweep"


def _bad(name, value):
    x = grid_inputs(2, 3, seed=1)
    return {**x, name: value(x)}


@pytest.mark.parametrize("inputs, options, error, match", [
    (_bad("k", lambda x: x["k"][..., :2]), {}, ValueError, r"k: expected shape \[B, X, Y, H, K\]"),
    (_bad("v", lambda x: x["v"][:, :1]), {}, ValueError, r"v: expected shape"),
    (_bad("T", lambda x: x["T"][..., :3]), {}, ValueError, r"T: expected shape \[B, X, Y, H, 4\]"),
    (_bad("E", lambda x: x["E"][..., None]), {}, ValueError, r"E: expected shape \[B, X, Y, H\]"),
    (_bad("q", lambda x: x["q"][0]), {}, ValueError, r"q: expected 5 dims"),
    (_bad("S", lambda x: x["S"].long()), {}, TypeError, r"S: expected a floating-point dtype"),
    (_bad("q", lambda x: x["q"].long()), {}, TypeError, r"q: expected a floating-point dtype"),
    (_bad("k", lambda x: x["k"].float()), {}, TypeError, r"k: expected dtype torch.float64"),
    (grid_inputs(2, 3), dict(mode="X"), ValueError, r"mode: expected 'P' or 'D', got 'X'"),
    (grid_inputs(2, 3), dict(orientation=4), ValueError, r"orientation: expected an int in 0..3"),
    (grid_inputs(2, 3), dict(orientation=True), ValueError, r"orientation: expected an int"),
    (grid_inputs(2, 3), dict(normalize=1), TypeError, r"normalize: expected a bool"),
    (grid_inputs(2, 3), dict(mode="D"), ValueError, r"T: expected T\[..., 2\] \(T\^dl\) == 0"),
    (_bad("T", lambda x: 2 * grid_inputs(2, 3, "D")["T"]), dict(mode="D"), ValueError,
     r"T: expected values in \[-1, 1\]"),
])
def test_plstm2d_validation(inputs, options, error, match):
    with pytest.raises(error, match=match):
        plstm2d(**inputs, **options)


def test_plstm1d_validation():
    x = seq_inputs(4)
    with pytest.raises(ValueError, match=r"T: expected shape \[B, L, H\]"):
        plstm1d(**{**x, "T": x["T"][..., None]})
    with pytest.raises(ValueError, match=r"v: expected shape \[B, L, H, V\]"):
        plstm1d(**{**x, "v": x["v"][:, :2]})
    with pytest.raises(ValueError, match=r"backend: expected one of"):
        plstm1d(**x, backend="chunk")
