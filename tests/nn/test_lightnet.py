"""LightNet: MD-LRPE, MD-TPE and the attention layer on sequences (causal, decode) and grids."""

import pytest
import torch

from linscan.nn.grid.lightnet import LightNetAttention
from linscan.nn.positional import MDTPE, md_lrpe


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def lrpe_scores(q, k, pos_q, pos_k):
    """<q'_s, k'_t> for every pair: q [L, H, d] at positions pos_q [L, 2] -> [H, L, L]."""
    q2, k2 = md_lrpe(q[None], pos_q), md_lrpe(k[None], pos_k)
    return torch.einsum("shc,thc->hst", q2[0], k2[0])


def test_md_lrpe_scores_are_relative_and_follow_the_cosine_formula():
    L, H, d = 6, 2, 5                                          # d odd: Theta is cut to d channels
    q, k = rand(L, H, d, seed=1), rand(L, H, d, seed=2)
    pos = torch.randint(-9, 9, (L, 2), generator=torch.Generator().manual_seed(3))
    shift = torch.tensor([4, -7])
    scores = lrpe_scores(q, k, pos, pos)
    torch.testing.assert_close(lrpe_scores(q, k, pos + shift, pos + shift), scores, rtol=1e-12, atol=1e-12)
    # Theta_c(s) = s_{c // e} theta_{c % e}, e = ceil(d / 2), theta_i = 10000^(-2 i / d)
    e = 3
    theta = torch.tensor([10000.0 ** (-2 * (c % e) / d) for c in range(d)], dtype=torch.float64)
    angles = pos[:, [c // e for c in range(d)]].double() * theta       # (L, d)
    diff = angles[:, None, :] - angles[None, :, :]                     # (L, L, d)
    want = torch.einsum("shc,thc,stc->hst", q, k, diff.cos())
    torch.testing.assert_close(scores, want, rtol=1e-12, atol=1e-12)


def test_md_lrpe_zero_positions_keep_x_and_zero_sine():
    x = rand(2, 3, 2, 6, seed=4)
    out = md_lrpe(x, torch.zeros(2, 3, 2, dtype=torch.long))           # cls tokens: Theta = 0
    torch.testing.assert_close(out[..., :6], x, rtol=0, atol=0)
    assert (out[..., 6:] == 0).all()


def tpe_loop(tpe, x):
    """MD-TPE by its recurrence: per axis, line and head, s_i = lambda s_{i-1} + k_h x_i^T, o_i = s_i^T q_h."""
    Bn, X, Y, D = x.shape
    H = tpe.n_heads
    hd = D // H
    total = torch.zeros_like(x)
    for a in range(2):
        o = torch.zeros_like(x)
        for b in range(Bn):
            for line in range(Y if a == 0 else X):
                for h in range(H):
                    lam = torch.sigmoid(tpe.decay_logit[a, h])
                    q_h, k_h = tpe.q[a, h * hd:(h + 1) * hd], tpe.k[a, h * hd:(h + 1) * hd]
                    s = torch.zeros(hd, hd, dtype=x.dtype)
                    for i in range(X if a == 0 else Y):
                        cell = (b, i, line) if a == 0 else (b, line, i)
                        s = lam * s + torch.outer(k_h, x[cell][h * hd:(h + 1) * hd])
                        o[cell + (slice(h * hd, (h + 1) * hd),)] = s.t() @ q_h
        groups = o.view(Bn, X, Y, H, hd)
        normed = groups / torch.sqrt(groups.pow(2).mean(-1, keepdim=True) + tpe.eps)
        total = total + tpe.proj[a](normed.reshape(x.shape) * tpe.norm_weight[a])
    return total


def test_mdtpe_equals_the_per_axis_recurrence_on_a_2d_grid():
    torch.manual_seed(0)
    tpe = MDTPE(8, 2, 2).double()
    with torch.no_grad():
        tpe.norm_weight.copy_(rand(2, 8, seed=5))
    x = rand(2, 3, 4, 8, seed=6)
    torch.testing.assert_close(tpe(x), tpe_loop(tpe, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid", [(5,), (2, 3, 2)])
def test_mdtpe_shapes_on_1d_and_3d_grids(grid):
    tpe = MDTPE(8, 4, len(grid)).double()
    assert tpe(rand(2, *grid, 8)).shape == (2, *grid, 8)


def make_layer(seed=0):
    torch.manual_seed(seed)
    return LightNetAttention(16, 2).double()


@pytest.mark.parametrize("shape", [(2, 7, 16), (2, 3, 4, 16), (1, 2, 3, 2, 16)])
def test_layer_shapes(shape):
    y, state = make_layer()(rand(*shape))
    assert y.shape == shape and torch.isfinite(y).all()
    if len(shape) == 3:
        assert state["S"].shape == (2, 2, 16, 8) and state["z"].shape == (2, 2, 8)
        assert state["pos"].tolist() == [7, 7]
    else:
        assert state is None


def layer_reference(layer, x):
    """y by the formula: o_t = scale sum_{s visible} sum_c q_tc w_sc cos(Theta_c(t) - Theta_c(s)) v_s,
    w_{., c} = softmax of k_{., c} over the visible positions (s <= t on sequences, all cells on grids)."""
    Bn, *grid, D = x.shape
    H, Kh = layer.n_heads, layer.head_dim
    flat = x.reshape(Bn, -1, D)
    L = flat.shape[1]
    q = torch.nn.functional.silu(flat @ layer.q_proj.weight.t()).view(Bn, L, H, Kh)
    k = (flat @ layer.k_proj.weight.t()).view(Bn, L, H, Kh)
    v = (flat @ layer.v_proj.weight.t()).view(Bn, L, H, Kh)
    e = -(-Kh // len(grid))                                  # ceil(K / axes)
    coords = torch.cartesian_prod(*(torch.arange(n) for n in grid)).view(L, -1).double()  # row-major
    theta = torch.tensor([10000.0 ** (-2 * (c % e) / Kh) for c in range(Kh)], dtype=torch.float64)
    angles = coords[:, [c // e for c in range(Kh)]] * theta                             # (L, Kh)
    cos = (angles[:, None, :] - angles[None, :, :]).cos()                                # (L, L, Kh)
    o = torch.zeros_like(v)
    for t in range(L):
        end = t + 1 if len(grid) == 1 else L
        w = torch.softmax(k[:, :end], dim=1)                                             # (B, end, H, Kh)
        o[:, t] = torch.einsum("bhc,bshc,sc,bshv->bhv", q[:, t], w, cos[t, :end], v[:, :end]) * layer.scale
    return layer.o_proj(layer.norm(o).flatten(-2)).view(x.shape)


@pytest.mark.parametrize("shape", [(2, 9, 16), (2, 3, 4, 16)])
def test_layer_equals_the_explicit_formula(shape):
    layer, x = make_layer(4), rand(*shape, seed=10)
    torch.testing.assert_close(layer(x)[0], layer_reference(layer, x), rtol=1e-10, atol=1e-12)


def test_layer_decode_equals_forward_and_is_causal():
    layer, x = make_layer(1), rand(2, 9, 16, seed=7)
    y, full = layer(x)
    y_pre, state = layer(x[:, :4])
    steps = [y_pre]
    for t in range(4, 9):
        y_t, state = layer(x[:, t:t + 1], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, dim=1), y, rtol=1e-10, atol=1e-12)
    for name in ("S", "z", "pos"):
        torch.testing.assert_close(state[name], full[name], rtol=1e-10, atol=1e-12)
    x2 = x.clone()
    x2[:, -1] += 1.0
    torch.testing.assert_close(layer(x2)[0][:, :-1], y[:, :-1], rtol=0, atol=0)


def test_layer_varlen_equals_per_sequence():
    layer, x = make_layer(2), rand(1, 10, 16, seed=8)
    cu = torch.tensor([0, 3, 10])
    y, state = layer(x, cu_seqlens=cu)
    for n, (bos, eos) in enumerate([(0, 3), (3, 10)]):
        y_n, s_n = layer(x[:, bos:eos])
        torch.testing.assert_close(y[:, bos:eos], y_n, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(state["S"][n:n + 1], s_n["S"], rtol=1e-10, atol=1e-12)
    assert state["pos"].tolist() == [3, 7]


def test_layer_grid_is_noncausal_and_gradients_flow():
    layer, x = make_layer(3), rand(2, 3, 4, 16, seed=9).requires_grad_()
    y, _ = layer(x)
    y.pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0
    with torch.no_grad():
        x2 = x.detach().clone()
        x2[:, -1, -1] += 1.0                                           # the last cell moves the first
        assert (layer(x2)[0][:, 0, 0] - y[:, 0, 0]).abs().max() > 1e-6


def test_layer_refuses_state_on_grids():
    layer = make_layer()
    with pytest.raises(ValueError, match="state, cu_seqlens: expected None for grid inputs"):
        layer(rand(1, 2, 2, 16), state={})
