"""pLSTM-2D layer and block: shapes, gradients, the paper's gates and init, orientation = flips."""

import pytest
import torch
from torch import nn

from linscan.nn.grid.plstm import PLSTM2D, PLSTM2DBlock, d_gates, p_gates
from linscan.nn.init import init_weights
from linscan.ops.grid.plstm import normalize_transitions

D_MODEL, HEADS = 8, 2


def grid(B=2, X=3, Y=4, seed=0):
    return torch.randn(B, X, Y, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def layer(mode, orientation=0, seed=0):
    """A float64 layer whose gate weights are random, so the gates vary over the grid."""
    torch.manual_seed(seed)
    m = PLSTM2D(D_MODEL, HEADS, head_dim=3, value_dim=2, mode=mode, orientation=orientation).double()
    with torch.no_grad():
        m.gate_proj.weight.normal_(std=0.5)
    return m


@pytest.mark.parametrize("mode", ["P", "D"])
def test_shape_and_gradients_flow(mode):
    m, x = layer(mode), grid().requires_grad_(True)
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    y.square().sum().backward()
    assert x.grad.norm() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.norm() > 0, name


@pytest.mark.parametrize("orientation", [1, 2, 3])
@pytest.mark.parametrize("mode", ["P", "D"])
def test_orientation_equals_flipping_input_and_output(mode, orientation):
    base, turned = layer(mode, 0), layer(mode, orientation, seed=1)
    turned.load_state_dict(base.state_dict())
    flips = [axis for bit, axis in ((1, 1), (2, 2)) if orientation & bit]
    x = grid(seed=2)
    torch.testing.assert_close(turned(x), base(x.flip(flips)).flip(flips), rtol=1e-10, atol=1e-10)
    assert (turned(x) - base(x)).norm() > 1e-3 * base(x).norm()


def test_paper_init_and_gate_structure():
    for mode in "PD":
        m = PLSTM2D(D_MODEL, HEADS, mode=mode)
        before = m.gate_proj.bias.detach().clone()
        init_weights(m, n_layers=2)                                     # keeps the gate init
        torch.testing.assert_close(m.gate_proj.bias, before)
        assert m.gate_proj.weight.abs().max() == 0
    pre = {n: torch.full((1, 1, 1, 1), b) for n, b in {"S": -4.0, "T": 1.0, "M": -4.0, "E": -6.0, "O": 0.0}.items()}
    S, T, M, E = p_gates(pre)
    o, t = 0.5, 0.5 * torch.tanh(torch.tensor(5.0))
    torch.testing.assert_close(S[..., 0], o * torch.sigmoid(torch.tensor(-4.0)).expand(1, 1, 1, 1))
    torch.testing.assert_close(S.sum(-1), torch.ones(1, 1, 1, 1))      # s_d = 1 - s_r
    torch.testing.assert_close(T[0, 0, 0, 0], torch.stack((t, t, 1 - t, 1 - t)))
    torch.testing.assert_close(normalize_transitions(T), T)             # an exact split: unchanged
    torch.testing.assert_close(E, torch.sigmoid(torch.tensor(-6.0)).expand(1, 1, 1, 1))
    torch.testing.assert_close(M[..., 0], M[..., 1])
    names = ("S_r", "S_d", "T_rl", "T_ru", "T_du", "M_l", "M_u", "E")
    _, T, _, _ = d_gates({n: torch.randn(2, 3, 4, 2) for n in names})
    assert (T[..., 2] == 0).all() and T.abs().max() <= 1


@pytest.mark.parametrize("mlp", [True, False])
def test_block_alternates_p_and_d(mlp):
    block = PLSTM2DBlock(D_MODEL, HEADS, orientation=3, mlp=mlp).double()
    assert [m.mode for m in block.mixers] == ["P", "D"]
    x = grid(X=2, Y=5).requires_grad_(True)
    y = block(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.norm() > 0


def test_bad_mode():
    with pytest.raises(ValueError, match=r"mode: expected 'P' or 'D', got 'Q'"):
        PLSTM2D(D_MODEL, HEADS, mode="Q")


def test_float32_layer_runs():
    m = PLSTM2D(D_MODEL, HEADS)
    assert isinstance(m.o_proj, nn.Linear)
    y = m(grid().float())
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
