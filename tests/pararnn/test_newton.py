"""newton_rnn: Newton-parallel solution == sequential loop, adjoint gradients == backprop, no unrolling."""

import re

import pytest
import torch

from linscan.pararnn import ALRNN, ParaGRU, ParaLSTMCIFG, newton_rnn, sequential_rnn
from linscan.pararnn import newton as newton_mod

N_IN = 5


def make_cell(name, seed=0):
    torch.manual_seed(seed)
    if name == "gru":
        cell = ParaGRU(N_IN, 6)
    elif name == "lstm":
        cell = ParaLSTMCIFG(N_IN, 4)
    else:
        cell = ALRNN(N_IN, 7, relu_units=4)
        with torch.no_grad():                                    # contractive: ||A|| + ||W|| < 1
            cell.A.uniform_(-0.5, 0.5)
            cell.W.mul_(2.0)
            cell.h.normal_(0, 0.3)
    return cell.double()


def make_inputs(cell, B, T, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, N_IN, generator=gen, dtype=torch.float64)
    h0 = 0.5 * torch.randn(B, cell.state_size, generator=gen, dtype=torch.float64)
    return x, h0


CELLS = ["gru", "lstm", "alrnn"]
SHAPES = [(1, 1), (3, 1), (2, 17), (3, 64)]


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("B, T", SHAPES)
def test_newton_matches_sequential(name, B, T):
    # ALRNN is piecewise linear: once the ReLU pattern is right the Newton step is exact.
    cell = make_cell(name)
    x, h0 = make_inputs(cell, B, T)
    with torch.no_grad():
        ref = sequential_rnn(cell, x, h0)
        h, info = newton_rnn(cell, x, h0, max_iters=20, tol=1e-12, return_info=True)
    res = info["residuals"]
    print(f"{name} B={B} T={T} max|F| per iterate: " + " ".join(f"{r:.1e}" for r in res))
    assert res[-1] < 1e-12 and info["iters"] <= 20
    assert all(b <= a for a, b in zip(res, res[1:])), res
    torch.testing.assert_close(h, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", CELLS)
def test_jacobian_matches_autograd(name):
    cell = make_cell(name)
    x, h0 = make_inputs(cell, 3, 1)
    x, h0 = x[:, 0], h0
    jac = cell.jacobian(h0, x)
    for b in range(3):
        full = torch.autograd.functional.jacobian(lambda h: cell.step(h, x[b]), h0[b])   # (M, M)
        if cell.structure == "diagonal":
            torch.testing.assert_close(jac[b], full.diagonal(), atol=1e-12, rtol=0)
        elif cell.structure == "block":
            torch.testing.assert_close(torch.block_diag(*jac[b]), full, atol=1e-12, rtol=0)
        else:
            torch.testing.assert_close(jac[b], full, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("B, T", [(1, 1), (3, 1), (2, 17), (3, 40)])
def test_gradients_match_backprop_through_loop(name, B, T):
    cell = make_cell(name)
    x, h0 = make_inputs(cell, B, T)
    proj = torch.randn(B, T, cell.state_size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    params = list(cell.parameters())

    def grads(fn):
        xg, hg = x.clone().requires_grad_(), h0.clone().requires_grad_()
        loss = (fn(cell, xg, hg) * proj).sum()
        return torch.autograd.grad(loss, [xg, hg, *params])

    ref = grads(sequential_rnn)
    got = grads(lambda c, xx, hh: newton_rnn(c, xx, hh, max_iters=40, tol=1e-13))
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=1e-8, rtol=1e-8)


def test_gradients_without_h0_and_for_params_only():
    cell = make_cell("gru")
    x, _ = make_inputs(cell, 2, 9)
    loss_ref = sequential_rnn(cell, x).square().sum()
    ref = torch.autograd.grad(loss_ref, list(cell.parameters()))
    got = torch.autograd.grad(newton_rnn(cell, x, max_iters=20, tol=1e-13).square().sum(), list(cell.parameters()))
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", CELLS)
def test_backward_is_one_reverse_scan_not_unrolled(name, monkeypatch):
    cell = make_cell(name)
    x, h0 = make_inputs(cell, 2, 13)
    calls = []
    scan = newton_mod.linear_scan

    def counting_scan(a, b, h0=None, *, reverse=False, **kwargs):
        calls.append(reverse)
        return scan(a, b, h0, reverse=reverse, **kwargs)

    monkeypatch.setattr(newton_mod, "linear_scan", counting_scan)
    x.requires_grad_()
    h = newton_rnn(cell, x, h0, max_iters=5)
    assert type(h.grad_fn).__name__ == "_NewtonRNNBackward"
    # the only graph is the Function itself, straight onto the leaves: no recorded iterations
    leaves = {type(fn).__name__ for fn, _ in h.grad_fn.next_functions if fn is not None}
    assert leaves == {"AccumulateGrad"}
    assert calls == [False] * 5
    calls.clear()
    h.sum().backward()
    assert calls == [True]


def test_residual_stops_at_tol_and_default_iters():
    cell = make_cell("gru")
    x, h0 = make_inputs(cell, 2, 50)
    with torch.no_grad():
        _, info = newton_rnn(cell, x, h0, return_info=True)
        assert info["iters"] == 3 and len(info["residuals"]) == 4
        _, info = newton_rnn(cell, x, h0, max_iters=50, tol=1e-6, return_info=True)
    assert info["residuals"][-1] < 1e-6 and all(r >= 1e-6 for r in info["residuals"][:-1])


@pytest.mark.parametrize("name", CELLS)
def test_fallback_gives_the_loop_when_newton_has_not_converged(name):
    cell = make_cell(name)
    x, h0 = make_inputs(cell, 2, 30)
    proj = torch.randn(2, 30, cell.state_size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xg = x.clone().requires_grad_()
    h, info = newton_rnn(cell, xg, h0, max_iters=1, tol=1e-13, fallback=True, return_info=True)
    assert info["fallback"] and info["iters"] == 1 and info["residuals"][-1] >= 1e-13
    torch.testing.assert_close(h, sequential_rnn(cell, x, h0), atol=1e-12, rtol=0)
    (h * proj).sum().backward()                                  # adjoint at the exact solution
    xr = x.clone().requires_grad_()
    (sequential_rnn(cell, xr, h0) * proj).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, atol=1e-9, rtol=0)
    with torch.no_grad():
        _, info = newton_rnn(cell, x, h0, max_iters=40, tol=1e-12, fallback=True, return_info=True)
    assert not info["fallback"]


def test_after_k_steps_the_first_k_states_are_exact():
    """Whatever the cell's contraction, Newton on the lower-triangular system fixes one more step per iteration."""
    cell = make_cell("gru")
    with torch.no_grad():
        for p in (cell.A_z, cell.A_r, cell.A_h):
            p.mul_(6.0)
        x, h0 = make_inputs(cell, 2, 12)
        ref = sequential_rnn(cell, x, h0)
        h = newton_rnn(cell, x, h0, max_iters=4)
    torch.testing.assert_close(h[:, :5], ref[:, :5], atol=1e-12, rtol=0)


def test_bad_shapes_raise():
    cell = make_cell("gru")
    x, h0 = make_inputs(cell, 2, 5)
    with pytest.raises(ValueError, match="x"):
        newton_rnn(cell, x[0])
    with pytest.raises(ValueError, match="h0"):
        newton_rnn(cell, x, h0[:, :3])


@pytest.mark.parametrize("name", CELLS)
def test_float32_follows_the_float64_solution(name):
    cell = make_cell(name)
    x, h0 = make_inputs(cell, 2, 33)
    with torch.no_grad():
        ref = sequential_rnn(cell, x, h0)
        h = newton_rnn(cell.float(), x.float(), h0.float(), max_iters=10)
    assert h.dtype == torch.float32
    torch.testing.assert_close(h.double(), ref, atol=1e-5, rtol=0)


def test_fused_cell_gives_the_same_solution_and_gradients():
    cell = make_cell("gru").float()
    x, h0 = (t.float() for t in make_inputs(cell, 2, 33))
    proj = torch.randn(2, 33, cell.state_size, generator=torch.Generator().manual_seed(5))

    def solve(c):
        xg = x.clone().requires_grad_()
        h = newton_rnn(c, xg, h0, max_iters=10)
        (h * proj).sum().backward()
        return h.detach(), xg.grad

    import copy
    ref = solve(cell)
    fused = newton_mod.fuse(copy.deepcopy(cell))
    assert fused.linearize is not cell.linearize
    for got, want in zip(solve(fused), ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CELLS)
def test_segments_give_the_same_solution_and_gradients(name):
    cell = make_cell(name)
    x, h0 = make_inputs(cell, 2, 45)
    proj = torch.randn(2, 45, cell.state_size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def solve(segment):
        xg, hg = x.clone().requires_grad_(), h0.clone().requires_grad_()
        h, info = newton_rnn(cell, xg, hg, max_iters=30, tol=1e-13, segment=segment, return_info=True)
        (h * proj).sum().backward()
        grads = [xg.grad, hg.grad] + [p.grad.clone() for p in cell.parameters()]
        cell.zero_grad()
        return h.detach(), grads, info

    h_ref, g_ref, _ = solve(None)
    h, g, info = solve(8)                                        # 5 whole segments and a 5-position tail
    assert info["residuals"][-1] < 1e-13 and not info["fallback"]
    torch.testing.assert_close(h, h_ref, atol=1e-12, rtol=0)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="segment"):
        newton_rnn(cell, x, segment=0)


@pytest.mark.parametrize("kwargs, x_shape, argument", [
    ({"max_iters": 0}, (2, 10, 8), "max_iters"),
    ({"max_iters": -1}, (2, 10, 8), "max_iters"),
    ({"max_iters": 2.5}, (2, 10, 8), "max_iters"),
    ({"tol": -1.0}, (2, 10, 8), "tol"),
    ({"tol": float("nan")}, (2, 10, 8), "tol"),
    ({"fallback": True}, (2, 10, 8), "fallback"),
    ({}, (2, 10, 5), "x: expected N = 8"),
    ({}, (2, 0, 8), "x: expected T >= 1"),
    ({}, (10, 8), "x: expected a tensor [B, T, N]"),
])
def test_bad_arguments_name_themselves(kwargs, x_shape, argument):
    cell = ParaGRU(8, 16)
    with pytest.raises(ValueError, match=re.escape(argument)):
        newton_rnn(cell, torch.randn(x_shape), **kwargs)
    if not kwargs:
        with pytest.raises(ValueError, match=re.escape(argument)):
            sequential_rnn(cell, torch.randn(x_shape))


def test_integer_inputs_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="x: expected a floating dtype"):
        newton_rnn(ParaGRU(8, 16), torch.ones(2, 3, 8, dtype=torch.long))
    for make, argument in [(lambda: ParaGRU(0, 16), "input_size"), (lambda: ParaLSTMCIFG(8, -2), "hidden_size"),
                           (lambda: ALRNN(8, 16, 17), "relu_units"), (lambda: ALRNN(8, 2.5, 1), "state_size")]:
        with pytest.raises(ValueError, match=argument):
            make()
