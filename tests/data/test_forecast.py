"""Forecasting data: the coupled AR process has the cross-variate structure it claims
(a least-squares fit recovers it, and neighbours help only when coupled), windows
and splits are chronological with train-only statistics, macrodata loads, and the
per-horizon errors and argument checks behave."""

import sys

import pytest
import torch

from linscan.data.tasks.forecast import (MACRO_COLUMNS, coupled_ar, coupled_ar_transition, forecast_errors,
                                         load_macrodata, make_forecast_data, make_windows)


def lag_fit_error(series, use_neighbour):
    """Held-out one-step MSE of per-variate least squares on the previous step of the
    variate itself (AR) or of itself and its ring neighbour (sparse VAR).
    Fit on the first half, score on the second."""
    x = series.double()
    prev, now = x[:-1], x[1:]                                                     # (T-1, V)
    half, errors = now.shape[0] // 2, []
    for v in range(x.shape[1]):
        cols = [prev[:, v], prev[:, v - 1]] if use_neighbour else [prev[:, v]]
        design = torch.stack(cols + [torch.ones_like(prev[:, v])], dim=1)        # (T-1, p)
        coef = torch.linalg.lstsq(design[:half], now[:half, v, None]).solution
        errors.append((design[half:] @ coef - now[half:, v, None]).square().mean())
    return torch.stack(errors).mean().item()


# ---------------------------------------------------------------- coupled AR

def test_coupled_ar_shape_dtype_determinism():
    x = coupled_ar(200, 3, seed=1)
    assert x.shape == (200, 3) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, coupled_ar(200, 3, seed=1))
    assert not torch.equal(x, coupled_ar(200, 3, seed=2))
    assert coupled_ar(5, 1, coupling=0.0).shape == (5, 1)


def test_transition_matrix_is_ring_coupled():
    a = coupled_ar_transition(4, ar=0.5, coupling=0.3)
    expected = torch.tensor([[0.5, 0, 0, 0.3], [0.3, 0.5, 0, 0], [0, 0.3, 0.5, 0], [0, 0, 0.3, 0.5]],
                            dtype=torch.float64)
    assert torch.equal(a, expected)
    assert torch.linalg.eigvals(a).abs().max() < 1


def test_least_squares_recovers_the_transition():
    x = coupled_ar(4000, 3, ar=0.5, coupling=0.4, seed=0).double()               # (T, V)
    fitted = torch.linalg.lstsq(x[:-1], x[1:]).solution.T                          # x_t ~ A x_{t-1}
    assert (fitted - coupled_ar_transition(3, ar=0.5, coupling=0.4)).abs().max() < 0.06


def test_neighbours_help_only_when_coupled():
    coupled = coupled_ar(2000, 4, ar=0.4, coupling=0.5, seed=0)
    independent = coupled_ar(2000, 4, ar=0.4, coupling=0.0, seed=0)
    assert lag_fit_error(coupled, True) < 0.85 * lag_fit_error(coupled, False)
    assert lag_fit_error(independent, True) > 0.98 * lag_fit_error(independent, False)
    # independent series: no lag-1 cross-correlation
    prev, now = independent[:-1], independent[1:]
    assert abs(torch.corrcoef(torch.stack([prev[:, 0], now[:, 1]]))[0, 1]) < 0.1


def test_stationary_variance():
    # one variate: var = noise^2 / (1 - (ar + coupling)^2); the burn-in removes the start at 0
    x = coupled_ar(4000, 1, ar=0.5, coupling=0.3, noise=2.0, seed=0).double()
    assert abs(x.var().item() / (4 / (1 - 0.8**2)) - 1) < 0.15
    # the first returned step is already stationary (without the burn-in its variance would be 4)
    first = torch.cat([coupled_ar(1, 1, ar=0.5, coupling=0.3, noise=2.0, seed=s) for s in range(300)])
    assert abs(first.double().var().item() / (4 / (1 - 0.8**2)) - 1) < 0.3


# ---------------------------------------------------------------- windows and splits

def test_make_windows_content():
    series = torch.arange(30.0).reshape(10, 3)                                    # (T=10, V=3)
    inputs, targets = make_windows(series, 4, 2)
    assert inputs.shape == (5, 4, 3) and targets.shape == (5, 2, 3)
    for i in range(5):
        assert torch.equal(inputs[i], series[i : i + 4]) and torch.equal(targets[i], series[i + 4 : i + 6])
    assert inputs.is_contiguous() and make_windows(series, 9, 1)[0].shape == (1, 9, 3)


def test_split_is_chronological_and_uses_train_statistics():
    series = coupled_ar(300, 3, seed=0) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([0.0, 10.0, -3.0])
    data = make_forecast_data(series, lookback=12, horizon=4, names=["a", "b", "c"])
    t1, t2 = data.bounds
    assert (t1, t2) == (210, 240) and data.names == ["a", "b", "c"]
    span = 12 + 4
    # every window lies inside its own segment, in time order, with no shared step
    assert data.train.start.min() == 0 and data.train.start.max() + span <= t1
    assert data.val.start.min() >= t1 and data.val.start.max() + span <= t2
    assert data.test.start.min() >= t2 and data.test.start.max() + span == 300
    assert data.train.inputs.shape == (210 - span + 1, 12, 3) and data.test.targets.shape == (60 - span + 1, 4, 3)
    # statistics from the train segment only
    assert torch.allclose(data.mean, series[:t1].mean(0), atol=1e-5)
    assert torch.allclose(data.std, series[:t1].std(0, unbiased=False), rtol=1e-5)
    # windows are the normalised series at their start; denormalise undoes it
    for split in (data.train, data.val, data.test):
        i = len(split.start) // 2
        s = int(split.start[i])
        assert torch.allclose(data.denormalise(split.inputs[i]), series[s : s + 12], atol=1e-4)
        assert torch.allclose(split.targets[i], data.normalise(series[s + 12 : s + 16]), atol=1e-5)
    flat = torch.cat([data.train.inputs[:, 0], data.train.inputs[-1, 1:], data.train.targets[-1]])
    assert flat.shape == (t1, 3)                                                  # the whole train segment
    assert torch.allclose(flat.mean(0), torch.zeros(3), atol=1e-5) and torch.allclose(flat.std(0, unbiased=False),
                                                                                         torch.ones(3), atol=1e-4)


def test_no_leak_from_later_segments():
    series = coupled_ar(300, 2, seed=0)
    changed = series.clone()
    changed[210:] += 100.0                                                        # val and test only
    a = make_forecast_data(series, lookback=8, horizon=2)
    b = make_forecast_data(changed, lookback=8, horizon=2)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.train.targets, b.train.targets)
    assert not torch.equal(a.val.inputs, b.val.inputs)


def test_constant_variate_keeps_std_one():
    series = torch.stack([torch.arange(100.0), torch.full((100,), 3.0)], dim=1)
    data = make_forecast_data(series, lookback=4, horizon=1)
    assert data.std[1] == 1 and (data.test.inputs[..., 1] == 0).all()


# ---------------------------------------------------------------- macrodata

def test_macrodata_loads():
    series, names = load_macrodata()
    assert series.shape == (202, 11) and series.dtype == torch.float32 and torch.isfinite(series).all()
    assert names == list(MACRO_COLUMNS) and names[0] == "realgdp" and "cpi" not in names
    growth = dict(zip(names, series.mean(0).tolist()))
    assert 0.5 < growth["realgdp"] < 1.0 and 0.1 < growth["pop"] < 0.5          # % per quarter
    assert 3 < growth["unemp"] < 9                                                # a level, untransformed
    data = make_forecast_data(series, lookback=8, horizon=4, names=names)
    assert data.train.inputs.shape == (141 - 12 + 1, 8, 11)


def test_macrodata_without_statsmodels(monkeypatch):
    monkeypatch.setitem(sys.modules, "statsmodels.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'linscan\[forecast\]'"):
        load_macrodata()


# ---------------------------------------------------------------- errors

def test_forecast_errors_per_horizon_step():
    target = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(0))
    pred = target + torch.tensor([0.0, 1.0, -2.0])[None, :, None]
    errors = forecast_errors(pred, target)
    assert torch.allclose(errors["mse"], torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64))
    assert torch.allclose(errors["mae"], torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    pred[0, 0, 0] += 10.0
    assert torch.allclose(forecast_errors(pred, target)["mae"][0], torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("call, word", [
    (lambda: coupled_ar(0, 2), "n_steps"),
    (lambda: coupled_ar(10, 0), "n_variates"),
    (lambda: coupled_ar(10, 2, ar=0.6, coupling=0.5), "coupling"),
    (lambda: coupled_ar(10, 2, ar=float("nan")), "ar"),
    (lambda: coupled_ar(10, 2, noise=0.0), "noise"),
    (lambda: coupled_ar(10, 2, seed=1.5), "seed"),
    (lambda: make_windows(torch.zeros(10), 2, 1), "series"),
    (lambda: make_windows(torch.zeros(10, 2), 0, 1), "lookback"),
    (lambda: make_windows(torch.zeros(10, 2), 2, 1.0), "horizon"),
    (lambda: make_windows(torch.zeros(10, 2), 8, 3), "lookback \\+ horizon"),
    (lambda: make_forecast_data(torch.zeros(100, 2, dtype=torch.long), lookback=2, horizon=1), "series"),
    (lambda: make_forecast_data(torch.full((100, 2), float("nan")), lookback=2, horizon=1), "finite"),
    (lambda: make_forecast_data(torch.zeros(100, 2), lookback=2, horizon=1, fractions=(0.8, 0.3, 0.1)), "fractions"),
    (lambda: make_forecast_data(torch.zeros(100, 2), lookback=2, horizon=1, names=["x"]), "names"),
    (lambda: make_forecast_data(torch.zeros(100, 2), lookback=2, horizon=0), "horizon"),
    (lambda: make_forecast_data(torch.zeros(100, 2), lookback=8, horizon=4), "val segment"),
    (lambda: forecast_errors(torch.zeros(2, 3), torch.zeros(2, 3)), "pred"),
    (lambda: forecast_errors(torch.zeros(2, 3, 1), torch.zeros(2, 4, 1)), "same shape"),
])
def test_bad_arguments_raise(call, word):
    with pytest.raises(ValueError, match=word):
        call()
