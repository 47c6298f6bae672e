"""The 2-D SSM layer: shapes, gradients, causality in time, and what the reversed-variate pass adds."""

import pytest
import torch

from linscan.nn.grid.ssm2d import SSM2D

F64 = torch.float64


def layer(seed=0, **options):
    torch.manual_seed(seed)
    return SSM2D(8, 2, state_size=3, **options).double()


def inputs(B=2, T=5, V=4, seed=1):
    return torch.randn(B, T, V, 8, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("form", ["cell", "roesser"])
def test_shapes_and_gradients_reach_every_parameter(form):
    m, x = layer(form=form), inputs().requires_grad_(True)
    y = m(x)
    assert y.shape == x.shape and y.dtype == F64
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_initial_coefficients_are_decaying():
    m = layer()
    a = -torch.exp(m.directions[0].A_log)
    assert (a < 0).all() and m.directions[0].cross.abs().max() < 0.1
    dt = torch.nn.functional.softplus(m.directions[0].dt_bias)
    assert ((dt > 0.9e-3) & (dt < 1.1e-1)).all()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_causal_in_time(bidirectional):
    m, x = layer(bidirectional=bidirectional), inputs()
    x2 = x.clone()
    x2[:, 3] += 1.0
    diff = (m(x2) - m(x)).abs().amax(dim=(0, 2, 3))              # per time step
    assert (diff[:3] == 0).all() and (diff[3:] > 0).all()


def test_reversed_pass_carries_later_variates_to_earlier_ones():
    x = inputs()
    x2 = x.clone()
    x2[:, :, -1] += 1.0                                            # change only the last variate
    forward_only = layer(bidirectional=False)
    assert torch.equal(forward_only(x2)[:, :, :-1], forward_only(x)[:, :, :-1])
    both = layer(bidirectional=True)
    assert (both(x2)[:, :, 0] - both(x)[:, :, 0]).abs().max() > 1e-6


def test_reversed_pass_changes_the_output_for_asymmetric_inputs():
    both = layer(bidirectional=True)
    forward_only = layer(bidirectional=False)
    forward_only.load_state_dict(both.state_dict(), strict=False)  # same weights, no second pass
    x = inputs()
    assert not torch.allclose(both(x), forward_only(x))
    both.directions[1].proj.weight.data.zero_()                    # backward pass: D x only
    both.directions[1].D.data.zero_()
    torch.testing.assert_close(both(x), forward_only(x), rtol=1e-12, atol=1e-12)


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match=r"n_heads: expected a positive divisor of d_inner .* = 16, got 3"):
        SSM2D(8, 3)
    with pytest.raises(ValueError, match=r"form: expected one of \['cell', 'roesser'\], got 'edge'"):
        SSM2D(8, 2, form="edge")
    with pytest.raises(ValueError, match=r"x: expected 4 dims \[B, T, V, d_model\], got 3 dims"):
        layer()(torch.zeros(2, 5, 8, dtype=F64))
