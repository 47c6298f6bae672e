"""linscan.models.forecast: shapes, variate mixing (2-D yes, 1-D no), DLinear against an explicit
per-variate computation, the moving average, instance-normalisation equivariance, errors."""

import pytest
import torch

from linscan.models.forecast import (FORECASTERS, DLinear, DLinearConfig, SSM1DForecaster, SSM2DForecaster,
                                     SSMForecasterConfig, build_forecaster, moving_average)

L, HZ, V = 12, 3, 4
TINY = dict(d_model=8, n_layers=1, n_heads=2, state_size=2)


def _model(name, **options):
    torch.manual_seed(0)
    options = {**(TINY if name != "dlinear" else {}), **options}
    return build_forecaster(name, lookback=L, horizon=HZ, n_variates=V, **options).double()


@pytest.mark.parametrize("name", list(FORECASTERS))
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes(name, batch):
    x = torch.randn(batch, L, V, dtype=torch.float64)
    assert _model(name)(x).shape == (batch, HZ, V)


def test_flatten_head_and_no_instance_norm_shapes():
    x = torch.randn(2, L, V, dtype=torch.float64)
    assert _model("ssm2d", head="flatten")(x).shape == (2, HZ, V)
    assert _model("ssm1d", instance_norm=False)(x).shape == (2, HZ, V)


def _cross_variate_gradient(model, target: int) -> torch.Tensor:
    """|d pred[:, :, target] / d x[:, :, v]| summed, per input variate v: ``[V]``."""
    x = torch.randn(2, L, V, dtype=torch.float64, requires_grad=True)
    model(x)[:, :, target].sum().backward()
    return x.grad.abs().sum(dim=(0, 1))                            # (V,)


def test_ssm1d_keeps_variates_apart_and_ssm2d_mixes_them():
    for target in (0, V - 1):
        g1 = _cross_variate_gradient(_model("ssm1d"), target)
        assert g1[target] > 0
        assert torch.all(g1[torch.arange(V) != target] == 0), g1
        g2 = _cross_variate_gradient(_model("ssm2d"), target)
        assert torch.all(g2 > 0), g2                               # bidirectional: every variate reaches target


def test_ssm1d_perturbing_another_variate_leaves_the_forecast_unchanged():
    model, x = _model("ssm1d"), torch.randn(2, L, V, dtype=torch.float64)
    y = x.clone()
    y[:, :, 2] += torch.randn(2, L, dtype=torch.float64)
    a, b = model(x), model(y)
    assert torch.equal(a[:, :, [0, 1, 3]], b[:, :, [0, 1, 3]])
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])
    model2 = _model("ssm2d")
    assert not torch.allclose(model2(x)[:, :, 0], model2(y)[:, :, 0])


def test_ssm1d_equals_the_same_weights_run_on_each_variate():
    """SSM2D on one variate is a 1-D SSM: the 1-D model's variate v equals the blocks run on [B, L, 1, d]."""
    model = _model("ssm1d", instance_norm=False)
    x = torch.randn(2, L, V, dtype=torch.float64)
    h = model.embed(x)                                             # (B, L, V, d)
    for v in range(V):
        hv = SSM2DForecaster.mix(model, h[:, :, v:v + 1])          # (B, L, 1, d)
        torch.testing.assert_close(model(x)[:, :, v], model.head(hv[:, -1, 0]))


@pytest.mark.parametrize("name", ["ssm2d", "ssm1d"])
def test_instance_norm_makes_ssm_forecasters_shift_scale_equivariant(name):
    model = _model(name, eps=1e-12)
    x = torch.randn(2, L, V, dtype=torch.float64)
    scale = torch.tensor([0.5, 2.0, 3.0, 10.0], dtype=torch.float64)
    shift = torch.tensor([-4.0, 0.0, 1.5, 100.0], dtype=torch.float64)
    torch.testing.assert_close(model(x * scale + shift), model(x) * scale + shift, rtol=1e-9, atol=1e-9)


def test_without_instance_norm_a_shift_is_not_undone():
    model = _model("ssm2d", instance_norm=False)
    x = torch.randn(2, L, V, dtype=torch.float64)
    assert not torch.allclose(model(x + 5), model(x) + 5)


@pytest.mark.parametrize("individual", [False, True])
def test_dlinear_equals_an_explicit_per_variate_computation(individual):
    model = _model("dlinear", individual=individual, kernel_size=5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(3, L, V, dtype=torch.float64)
    out = torch.empty(3, HZ, V, dtype=torch.float64)
    for v in range(V):
        g = v if individual else 0
        series = x[:, :, v]                                        # (B, L)
        padded = torch.cat([series[:, :1].repeat(1, 2), series, series[:, -1:].repeat(1, 2)], dim=1)
        trend = torch.stack([padded[:, t:t + 5].mean(1) for t in range(L)], dim=1)   # (B, L)
        out[:, :, v] = (trend @ model.trend.weight[g].T + model.trend.bias[g]
                        + (series - trend) @ model.remainder.weight[g].T + model.remainder.bias[g])
    torch.testing.assert_close(model(x), out)


def test_dlinear_shared_weights_ignore_other_variates():
    model = _model("dlinear")
    x = torch.randn(2, L, V, dtype=torch.float64)
    y = x.clone()
    y[:, :, 1] = 7.0
    assert torch.equal(model(x)[:, :, 0], model(y)[:, :, 0])


def test_moving_average_keeps_a_constant_and_a_line_in_the_middle():
    const = torch.full((2, 9, 3), 4.25, dtype=torch.float64)
    torch.testing.assert_close(moving_average(const, 5), const)
    line = torch.arange(9, dtype=torch.float64)[None, :, None]     # (1, 9, 1)
    torch.testing.assert_close(moving_average(line, 3)[:, 1:-1], line[:, 1:-1])
    torch.testing.assert_close(moving_average(line, 1), line)


def test_dlinear_kernel_is_odd_and_at_most_the_lookback():
    assert DLinearConfig(lookback=48, horizon=1, n_variates=1).kernel == 25
    assert DLinearConfig(lookback=8, horizon=1, n_variates=1).kernel == 7
    assert DLinearConfig(lookback=7, horizon=1, n_variates=1).kernel == 7
    assert DLinearConfig(lookback=48, horizon=1, n_variates=1, kernel_size=10).kernel == 9


def test_parameter_counts_of_the_two_ssm_forecasters_are_equal():
    count = lambda m: sum(p.numel() for p in m.parameters())        # noqa: E731
    assert count(_model("ssm2d")) == count(_model("ssm1d"))
    assert isinstance(_model("ssm1d"), SSM1DForecaster) and isinstance(_model("dlinear"), DLinear)


@pytest.mark.parametrize("call, message", [
    (lambda: build_forecaster("lstm", lookback=4, horizon=1, n_variates=1), "name: expected one of"),
    (lambda: build_forecaster("dlinear", lookback=4, horizon=1, n_variates=1, d_model=8),
     "options: expected fields of DLinearConfig"),
    (lambda: build_forecaster("ssm2d", lookback=0, horizon=1, n_variates=1), "lookback: expected an int >= 1"),
    (lambda: SSMForecasterConfig(lookback=4, horizon=1.5, n_variates=1), "horizon: expected an int >= 1"),
    (lambda: SSMForecasterConfig(lookback=4, horizon=1, n_variates=1, d_model=5, n_heads=3),
     r"n_heads: expected a divisor of expand \* d_model = 10, got 3"),
    (lambda: SSMForecasterConfig(lookback=4, horizon=1, n_variates=1, head="mean"), "head: expected one of"),
    (lambda: DLinearConfig(lookback=4, horizon=1, n_variates=1, individual=1), "individual: expected a bool"),
    (lambda: moving_average(torch.zeros(1, 4, 1), 2), "kernel: expected an odd int"),
])
def test_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("name", list(FORECASTERS))
def test_wrong_input_shape_is_named(name):
    model = _model(name)
    with pytest.raises(ValueError, match=r"x: expected \[B, L=12, V=4\], got \[2, 12, 5\]"):
        model(torch.zeros(2, L, V + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="x: expected a floating tensor"):
        model(torch.zeros(2, L, V, dtype=torch.long))
