"""Lorenz-63 AL-RNN example: RK4 integrator, D_stsp, Lyapunov estimator, training smoke run."""

import json
import math

import torch

from linscan.pararnn import lorenz


def test_rk4_matches_exact_linear_solution():
    # dx/dt = A x with A = [[-0.5, 2], [-2, -0.5]]: x(t) = expm(A t) x0 exactly
    A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)
    x0 = torch.tensor([1.0, -0.3], dtype=torch.float64)
    dt, n = 1e-3, 2000
    traj = lorenz.rk4(lambda x: x @ A.T, x0, n, dt)
    times = dt * torch.arange(1, n + 1, dtype=torch.float64)
    exact = torch.stack([torch.linalg.matrix_exp(A * t) @ x0 for t in times[::100]])
    assert traj.shape == (n, 2)
    assert (traj[::100] - exact).abs().max() < 1e-10


def test_rk4_fourth_order():
    # halving dt divides the global error by ~16
    A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    x0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    exact = torch.linalg.matrix_exp(A * 2.0) @ x0
    errs = [(lorenz.rk4(lambda x: x @ A.T, x0, n, 2.0 / n)[-1] - exact).norm() for n in (20, 40)]
    assert 12 < errs[0] / errs[1] < 20


def test_lorenz_bounded_and_chaotic():
    x = lorenz.lorenz63(3000)
    assert x.shape == (3000, 3) and x.dtype == torch.float64
    assert torch.isfinite(x).all() and x.abs().max() < 60
    assert x[:, 2].min() > 0                                     # z > 0 on the attractor
    assert (x[:, 0] > 0).any() and (x[:, 0] < 0).any()           # visits both wings
    lam = lorenz.max_lyapunov(lorenz.lorenz_step_jacobians(x[:2000]), lorenz.DT)
    assert 0.5 < lam < 1.4                                       # literature: ~0.91


def test_state_space_divergence():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5000, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(5000, 3, generator=gen, dtype=torch.float64)
    assert lorenz.state_space_divergence(a, a) == 0.0
    same = lorenz.state_space_divergence(a, b)
    shifted = lorenz.state_space_divergence(a, b + 1.0)
    far = lorenz.state_space_divergence(a, b + 3.0)
    assert 0 < same < shifted < far
    blown = torch.full((100, 3), float("nan"), dtype=torch.float64)
    assert math.isfinite(lorenz.state_space_divergence(a, blown))


def test_lyapunov_linear_map():
    # x_{t+1} = M x_t with M = R diag(2, 0.5, 0.1) R^T: exponents log 2, log 0.5, log 0.1
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1),
                                       dtype=torch.float64))
    M = q @ torch.diag(torch.tensor([2.0, 0.5, 0.1], dtype=torch.float64)) @ q.T
    spec = lorenz.lyapunov_spectrum(M.expand(200, 3, 3))
    expected = torch.tensor([2.0, 0.5, 0.1], dtype=torch.float64).log()
    assert torch.allclose(spec, expected, atol=1e-2)
    # a rotation-shear (non-normal) map: the sum of exponents equals log|det| exactly
    S = torch.tensor([[1.1, 3.0], [0.0, 0.7]], dtype=torch.float64)
    spec = lorenz.lyapunov_spectrum(S.expand(500, 2, 2), dt=0.5)
    assert abs(spec.sum() - math.log(1.1 * 0.7) / 0.5) < 1e-10
    assert abs(spec[0] - math.log(1.1) / 0.5) < 1e-2


def test_smoke_run(tmp_path):
    stats = lorenz.main(["--out", str(tmp_path), "--steps", "3", "--latent", "8",
                         "--relu-units", "4", "--tau", "10", "--batch", "4",
                         "--train-len", "500", "--eval-len", "600"])
    assert (tmp_path / "lorenz.png").stat().st_size > 0
    saved = json.loads((tmp_path / "lorenz.json").read_text())
    assert set(saved["trained"]) >= {"d_stsp", "max_lyapunov"}
    assert saved["newton_residual_last"] < 1e-4
    assert stats["ground_truth_max_lyapunov"] > 0
