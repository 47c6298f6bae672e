"""ssm2d (MATH.md 8.4): sweep vs the cell loop (outputs and gradients), decoupling, one variate,
the reversed-variate pass, the fixed-parameter convolution, ZOH discretisation, validation.

Grids are X (time) x Y (variates); everything float64.
"""

import pytest
import torch

from linscan import ops
from linscan.ops import linear_scan
from linscan.ops.grid.ssm2d import COEFFICIENTS, discretize, phi1, ssm2d

FORMS = ["cell", "roesser"]
TOL = dict(rtol=1e-10, atol=1e-12)
F64 = torch.float64


def make(X, Y, *, B=2, H=2, P=3, N=2, fixed=False, seed=0):
    """x [B, X, Y, H, P] and stable-ish coefficients (|Ab1|, |Ab4| < 0.9, small cross terms), d [H]."""
    gen = torch.Generator().manual_seed(seed)
    cell = (H, N) if fixed else (B, X, Y, H, N)

    def uniform(low, high, shape):
        return low + (high - low) * torch.rand(*shape, generator=gen, dtype=F64)

    inputs = dict(x=torch.randn(B, X, Y, H, P, generator=gen, dtype=F64),
                  a1=uniform(0.2, 0.9, cell), a2=uniform(-0.3, 0.3, cell),
                  a3=uniform(-0.3, 0.3, cell), a4=uniform(0.2, 0.9, cell))
    for name in ("b1", "b2", "c1", "c2"):
        inputs[name] = 0.7 * torch.randn(*cell, generator=gen, dtype=F64)
    inputs["d"] = torch.randn(H, generator=gen, dtype=F64)
    return inputs


def run(inputs, **options):
    return ssm2d(inputs["x"], *(inputs[n] for n in COEFFICIENTS), inputs["d"], **options)


def forward_backward(inputs, **options):
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in inputs.items()}
    y = run(leaves, **options)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    # allow_unused: with X = 1 the Roesser form never reads h1_in, so Ab1, Ab2, Bb1 may drop out
    grads = torch.autograd.grad((y * w).sum(), list(leaves.values()), allow_unused=True, materialize_grads=True)
    return y.detach(), dict(zip(leaves, grads))


def scan_loop(a, u, dim):
    """h_i = a_i h_{i-1} + u_i along ``dim`` (a plain loop, zero start)."""
    h, out = torch.zeros_like(u.select(dim, 0)), []
    for a_i, u_i in zip(a.unbind(dim), u.unbind(dim)):
        h = a_i * h + u_i
        out.append(h)
    return torch.stack(out, dim)


def shift(h, dim):
    """h at index i - 1 along ``dim`` (zero at i = 0)."""
    pad = torch.zeros_like(h.narrow(dim, 0, 1))
    return torch.cat([pad, h.narrow(dim, 0, h.shape[dim] - 1)], dim)


def per_channel(inputs):
    """Coefficients as [B, X, Y, H, 1, N] and x as [B, X, Y, H, P, 1]: they broadcast to the states."""
    return {n: (t[..., None] if n == "x" else t[..., None, :]) for n, t in inputs.items() if n != "d"}


@pytest.mark.parametrize("reverse_variates", [False, True])
@pytest.mark.parametrize("X, Y", [(1, 1), (1, 7), (5, 3), (6, 7)])
@pytest.mark.parametrize("form", FORMS)
def test_sweep_matches_naive_with_gradients(form, X, Y, reverse_variates):
    inputs = make(X, Y, seed=10 * X + Y)
    options = dict(form=form, reverse_variates=reverse_variates)
    y_ref, g_ref = forward_backward(inputs, backend="naive", **options)
    y, g = forward_backward(inputs, backend="sweep", **options)
    torch.testing.assert_close(y, y_ref, **TOL)
    for name in inputs:
        torch.testing.assert_close(g[name], g_ref[name], **TOL, msg=lambda m: f"grad {name}: {m}")


def test_fixed_coefficients_sweep_matches_naive_with_gradients():
    inputs = make(4, 3, fixed=True, seed=3)
    y_ref, g_ref = forward_backward(inputs, backend="naive")
    y, g = forward_backward(inputs, backend="sweep")
    torch.testing.assert_close(y, y_ref, **TOL)
    for name in inputs:
        assert g[name].shape == inputs[name].shape
        torch.testing.assert_close(g[name], g_ref[name], **TOL)


@pytest.mark.parametrize("backend", ["naive", "sweep"])
@pytest.mark.parametrize("form", FORMS)
def test_zero_cross_blocks_decouple_into_1d_scans(form, backend):
    inputs = make(5, 4, seed=1)
    inputs["a2"], inputs["a3"] = torch.zeros_like(inputs["a2"]), torch.zeros_like(inputs["a3"])
    c = per_channel(inputs)
    h1 = scan_loop(c["a1"], c["b1"] * c["x"], dim=1)              # along time, per variate
    h2 = scan_loop(c["a4"], c["b2"] * c["x"], dim=2)              # along variates, per time step
    if form == "roesser":
        h1, h2 = shift(h1, 1), shift(h2, 2)                      # a cell reads its incoming states
    expected = (c["c1"] * h1 + c["c2"] * h2).sum(-1) + inputs["x"] * inputs["d"][:, None]
    torch.testing.assert_close(run(inputs, form=form, backend=backend), expected, **TOL)


@pytest.mark.parametrize("backend", ["naive", "sweep"])
@pytest.mark.parametrize("form", FORMS)
def test_one_variate_is_a_1d_ssm(form, backend):
    inputs = make(7, 1, seed=2)
    B, X, _, H, P = inputs["x"].shape
    c = {n: t[:, :, 0] for n, t in per_channel(inputs).items()}  # (B, X, H, 1 | P, N | 1)
    u1, u2 = c["b1"] * c["x"], c["b2"] * c["x"]                  # (B, X, H, P, N)
    if form == "cell":
        # state (h1, h2) per channel: h1_t = Ab1 h1_{t-1} + Ab2 h2_{t-1} + Bb1 x_t, h2_t = Bb2 x_t
        a1, a2 = (t.expand_as(u1) for t in (c["a1"], c["a2"]))
        blocks = torch.stack([torch.stack([a1, a2], -1), torch.zeros(*u1.shape, 2, dtype=F64)], -2)
        s = linear_scan(blocks.flatten(2, 4), torch.stack([u1, u2], -1).flatten(2))
        h = s.view(*u1.shape, 2)                                  # (B, X, H, P, N, 2)
        y = (c["c1"] * h[..., 0] + c["c2"] * h[..., 1]).sum(-1)
    else:
        # no incoming h2: y_t = C1 h1_{t-1} with the plain 1-D SSM h1
        y = (c["c1"] * shift(scan_loop(c["a1"], u1, dim=1), 1)).sum(-1)
    expected = (y + inputs["x"][:, :, 0] * inputs["d"][:, None])[:, :, None]
    torch.testing.assert_close(run(inputs, form=form, backend=backend), expected, **TOL)


@pytest.mark.parametrize("backend", ["naive", "sweep"])
@pytest.mark.parametrize("form", FORMS)
def test_reversed_variates_is_the_flipped_forward(form, backend):
    inputs = make(4, 5, seed=4)
    flipped = {n: (t if n == "d" else t.flip(2)) for n, t in inputs.items()}
    expected = run(flipped, form=form, backend=backend).flip(2)
    got = run(inputs, form=form, backend=backend, reverse_variates=True)
    torch.testing.assert_close(got, expected, **TOL)
    assert not torch.allclose(got, run(inputs, form=form, backend=backend))


def path_sum_kernel(p, X, Y, form):
    """K [H, Y, X]: the response at offset (dv, dt) as path sums of C Ab...Ab Bb, from 2 x 2 blocks.

    With s = (h1, h2) per (head, state channel): s_{v,t} = E_t s_{v,t-1} + E_v s_{v-1,t} + Bb x_{v,t};
    S(i, j) sums the products of every ordering of i steps E_v and j steps E_t.
    """
    zero = torch.zeros_like(p["a1"])
    if form == "cell":
        E_t = torch.stack([torch.stack([p["a1"], p["a2"]], -1), torch.stack([zero, zero], -1)], -2)
        E_v = torch.stack([torch.stack([zero, zero], -1), torch.stack([p["a3"], p["a4"]], -1)], -2)
    else:
        E_t = torch.stack([torch.stack([p["a1"], zero], -1), torch.stack([p["a3"], zero], -1)], -2)
        E_v = torch.stack([torch.stack([zero, p["a2"]], -1), torch.stack([zero, p["a4"]], -1)], -2)
    S = {(0, 0): torch.eye(2, dtype=F64).expand_as(E_t)}          # (H, N, 2, 2)
    for i in range(Y):
        for j in range(X):
            if (i, j) != (0, 0):
                S[i, j] = sum(E @ S[k] for E, k in ((E_t, (i, j - 1)), (E_v, (i - 1, j))) if k in S)
    b = torch.stack([p["b1"], p["b2"]], -1)[..., None]            # (H, N, 2, 1)
    c1 = torch.stack([p["c1"], zero], -1)[..., None, :]           # (H, N, 1, 2)
    c2 = torch.stack([zero, p["c2"]], -1)[..., None, :]
    K = torch.zeros(p["a1"].shape[0], Y, X, dtype=F64)
    for (i, j), s in S.items():
        if form == "cell":
            K[:, i, j] += ((c1 + c2) @ s @ b).sum((1, 2, 3))
        else:  # y reads h1 from (v, t-1) and h2 from (v-1, t)
            if j + 1 < X:
                K[:, i, j + 1] += (c1 @ s @ b).sum((1, 2, 3))
            if i + 1 < Y:
                K[:, i + 1, j] += (c2 @ s @ b).sum((1, 2, 3))
    K[:, 0, 0] += p["d"]
    return K


@pytest.mark.parametrize("form", FORMS)
def test_fixed_parameters_are_a_2d_causal_convolution(form):
    X, Y = 6, 5
    p = make(X, Y, fixed=True, seed=5)
    K = path_sum_kernel(p, X, Y, form)                             # (H, Y, X)
    impulse = torch.zeros(1, X, Y, p["d"].shape[0], 1, dtype=F64)
    impulse[0, 0, 0] = 1
    response = run({**p, "x": impulse}, form=form)[0, :, :, :, 0]  # (X, Y, H)
    torch.testing.assert_close(response.permute(2, 1, 0), K, **TOL)
    x = p["x"]
    expected = torch.zeros_like(x)
    for t in range(X):
        for v in range(Y):
            for s in range(t + 1):
                for w in range(v + 1):
                    expected[:, t, v] += K[:, v - w, t - s, None] * x[:, s, w]
    torch.testing.assert_close(run(p, form=form), expected, **TOL)


def test_discretize_matches_matrix_exponential():
    """Van Loan: exp(dt [[A1, A2, B1], [0, 0, 0]]) holds the ZOH of h1 with h2 and x held over the step."""
    gen = torch.Generator().manual_seed(6)
    H, N = 2, 3
    a1, a4 = -torch.rand(H, N, generator=gen, dtype=F64) * 3, -torch.rand(H, N, generator=gen, dtype=F64)
    a1[0, 0], a4[1, 2] = 0.0, 1e-7                                 # the A -> 0 limit and the Taylor branch
    a2, a3, b1, b2 = torch.randn(4, H, N, generator=gen, dtype=F64)
    dt1, dt2 = torch.tensor([0.3, 1.7], dtype=F64), torch.tensor([0.05, 2.0], dtype=F64)
    got = discretize(a1, a2, a3, a4, b1, b2, dt1, dt2)
    for h in range(H):
        for own, cross, b, dt, (a_own, a_cross, b_in) in (
                (a1, a2, b1, dt1, ("a1", "a2", "b1")), (a4, a3, b2, dt2, ("a4", "a3", "b2"))):
            M = torch.zeros(2 * N + 1, 2 * N + 1, dtype=F64)
            M[:N, :N], M[:N, N:2 * N], M[:N, 2 * N] = torch.diag(own[h]), torch.diag(cross[h]), b[h]
            E = torch.linalg.matrix_exp(dt[h] * M)
            torch.testing.assert_close(E[:N, :N], torch.diag(getattr(got, a_own)[h]), **TOL)
            torch.testing.assert_close(E[:N, N:2 * N], torch.diag(getattr(got, a_cross)[h]), **TOL)
            torch.testing.assert_close(E[:N, 2 * N], getattr(got, b_in)[h], **TOL)


def test_discretize_small_step_limit():
    gen = torch.Generator().manual_seed(7)
    a1, a4 = -torch.rand(2, 1, 3, generator=gen, dtype=F64) * 4
    a2, a3, b1, b2 = torch.randn(4, 1, 3, generator=gen, dtype=F64)
    for dt in (0.0, 1e-9, 1e-6):
        step = torch.full((1,), dt, dtype=F64)
        got = discretize(a1, a2, a3, a4, b1, b2, step, step)
        torch.testing.assert_close(got.a1, 1 + dt * a1, rtol=1e-15, atol=dt ** 2 * 10)
        torch.testing.assert_close(got.a4, 1 + dt * a4, rtol=1e-15, atol=dt ** 2 * 10)
        for name, rate in (("a2", a2), ("a3", a3), ("b1", b1), ("b2", b2)):
            torch.testing.assert_close(getattr(got, name), dt * rate, rtol=1e-15, atol=dt ** 2 * 10)
    z = torch.tensor([0.0, 1e-6, -1e-5, -0.5, 3.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(phi1, (z,))


def test_discretize_forms_follow_their_inputs():
    H, N, B, X, Y = 2, 3, 2, 4, 3
    a = -torch.ones(H, N, dtype=F64)
    got = discretize(a, a, a, a, torch.ones(B, X, Y, H, N, dtype=F64), torch.ones(H, N, dtype=F64),
                     torch.rand(B, X, Y, H, dtype=F64), torch.rand(H, dtype=F64))
    assert [tuple(t.shape) for t in got] == [(B, X, Y, H, N)] * 2 + [(H, N)] * 2 + [(B, X, Y, H, N), (H, N)]


def test_registered_and_auto_is_sweep(monkeypatch):
    monkeypatch.delenv("LINSCAN_BACKEND", raising=False)
    assert ops.available()["ssm2d"] == ["naive", "sweep"]
    assert ops.resolve("ssm2d", "auto", "cpu") == "sweep"


@pytest.mark.parametrize("change, match", [
    (dict(form="diagonal"), r"form: expected one of \['cell', 'roesser'\], got 'diagonal'"),
    (dict(a2=torch.zeros(2, 5)),
     r"a2: expected shape \[H, N\] = \[2, 2\] or \[B, X, Y, H, N\] = \[2, 3, 4, 2, 2\], got \[2, 5\]"),
    (dict(x=torch.zeros(2, 3, 4, 2)), r"x: expected 5 dims \[B, X, Y, H, P\], got 4 dims"),
    (dict(d=torch.zeros(3)), r"d: expected shape \[H\] = \[2\] or \[H, P\] = \[2, 3\], got \[3\]"),
    (dict(backend="chunk"), r"backend: expected one of \['naive', 'sweep', 'auto'\]"),
])
def test_errors_name_the_argument(change, match):
    inputs = make(3, 4, seed=8)
    options = {k: change.pop(k) for k in ("form", "backend") if k in change}
    inputs.update({k: v.to(F64) for k, v in change.items()})
    with pytest.raises(ValueError, match=match):
        run(inputs, **options)


def test_dtype_mismatch_is_a_type_error():
    inputs = make(2, 2, seed=9)
    inputs["c1"] = inputs["c1"].float()
    with pytest.raises(TypeError, match=r"c1: expected dtype torch.float64 \(that of x\), got torch.float32"):
        run(inputs)
