"""LCM set aggregation (MATH.md 10.1): commutative operator, tree == recursive pairwise fold,
segments == per-set loop, dense == segments, identity and associativity regularisers, the PyG adapter."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from linscan.nn.lcm import AGGREGATORS, LCM, LCMCombine, SumAggregator

D = 6
TOL = dict(rtol=1e-12, atol=1e-12)


def make(name: str = "lcm", seed: int = 0, **opts) -> nn.Module:
    torch.manual_seed(seed)
    return AGGREGATORS[name](D, **opts).double()


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class Add(nn.Module):
    """An exactly associative operator with identity 0."""

    def forward(self, a, b):
        return a + b


class Counting(nn.Module):
    """Wraps a combine and counts its calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, a, b):
        self.calls += 1
        return self.inner(a, b)


def fold(elems: list[torch.Tensor], op, e: torch.Tensor | None) -> torch.Tensor:
    """Level-wise pairwise reduction, recursively: pair neighbours; the odd one out is carried (or op(x, e))."""
    if len(elems) == 1:
        return elems[0]
    level = [op(elems[i][None], elems[i + 1][None])[0] for i in range(0, len(elems) - 1, 2)]
    if len(elems) % 2:
        level.append(elems[-1] if e is None else op(elems[-1][None], e[None])[0])
    return fold(level, op, e)


def test_combine_is_exactly_commutative():
    torch.manual_seed(0)
    op = LCMCombine(16)
    a, b, c = torch.randn(3, 33, 16)
    assert torch.equal(op(a, b), op(b, a))
    assert not torch.allclose(op(op(a, b), c), op(a, op(b, c)))             # but not associative


@pytest.mark.parametrize("identity", ["carry", "learned"])
@pytest.mark.parametrize("n", range(1, 10))
def test_tree_equals_recursive_pairwise_fold(n, identity):
    lcm = make(identity=identity)
    if lcm.e is not None:
        nn.init.normal_(lcm.e)
    x = rand(n, D)
    expected = fold(list(x), lcm.combine, lcm.e)
    torch.testing.assert_close(lcm(x, torch.zeros(n, dtype=torch.long))[0], expected, **TOL)


@pytest.mark.parametrize("max_n, calls", [(1, 0), (2, 1), (9, 4), (16, 4), (17, 5)])
def test_one_combine_call_per_level(max_n, calls):
    lcm = make()
    lcm.combine = Counting(lcm.combine)
    sizes = [max_n, min(3, max_n), 1, max(1, max_n // 2)]
    index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    lcm(rand(sum(sizes), D), index)
    assert lcm.combine.calls == calls


def mixed_sets(seed: int = 2):
    """8 sets of sizes 0..9 (set 5 empty), rows shuffled: x [n_total, D], index [n_total], sizes."""
    sizes = [3, 1, 9, 2, 7, 0, 4, 5]
    index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    index = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))]
    return rand(len(index), D, seed=seed), index, sizes


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_segments_equal_per_set_loop(name):
    agg = make(name)
    x, index, sizes = mixed_sets()
    out = agg(x, index, dim_size=len(sizes) + 1)                          # one more empty set at the end
    assert out.shape == (len(sizes) + 1, D)
    for s in range(len(sizes) + 1):
        rows = x[index == s]                                              # order of appearance
        expected = agg(rows, torch.zeros(len(rows), dtype=torch.long), dim_size=1)[0]
        torch.testing.assert_close(out[s], expected, **TOL)
    assert not out[5].any() and not out[-1].any()                          # empty sets: zeros


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_dense_mask_equals_segments(name):
    agg = make(name)
    x = rand(4, 7, D)
    mask = torch.rand(4, 7, generator=torch.Generator().manual_seed(3)) > 0.4
    mask[2] = False                                                       # one empty set
    b = torch.arange(4)[:, None].expand(4, 7)
    torch.testing.assert_close(agg.forward_dense(x, mask), agg(x[mask], b[mask], dim_size=4), **TOL)
    torch.testing.assert_close(agg.forward_dense(x), agg(x.reshape(-1, D), b.reshape(-1)), **TOL)


def test_tree_of_an_associative_operator_is_its_reduction():
    lcm = LCM(D, combine=Add())
    x, index, sizes = mixed_sets()
    torch.testing.assert_close(lcm(x, index), SumAggregator(D)(x, index), **TOL)


def test_identity_regulariser_zero_iff_exact():
    x, index, _ = mixed_sets()
    lcm = LCM(D, identity="learned", combine=Add()).double()               # e = 0 is the identity of +
    assert lcm.identity_loss(x).item() == 0
    torch.testing.assert_close(lcm(x, index), LCM(D, combine=Add())(x, index), **TOL)   # padding with e == carry
    with torch.no_grad():
        lcm.e.fill_(0.5)
    torch.testing.assert_close(lcm.identity_loss(x), torch.tensor(0.25 * D, dtype=torch.float64), **TOL)
    assert make(identity="learned").identity_loss(x) > 0                 # a fresh GRU combine: not an identity
    with pytest.raises(ValueError, match="identity_loss needs identity='learned', got 'carry'"):
        make().identity_loss(x)


def test_associativity_regulariser():
    x = rand(10, D)
    assert LCM(D, combine=Add()).associativity_loss(x.round(), 32).item() == 0       # integers: + is exact
    g = torch.Generator().manual_seed(0)
    loss = make().associativity_loss(x, 32, generator=g)
    assert loss.shape == () and loss > 0
    with pytest.raises(ValueError, match="n_triples: expected >= 1, got 0"):
        make().associativity_loss(x, 0)


@pytest.mark.parametrize("name, identity", [(n, "carry") for n in AGGREGATORS] + [("lcm", "learned")])
def test_gradients_reach_every_parameter(name, identity):
    agg = make(name, **({"identity": identity} if name == "lcm" else {}))
    x, index, sizes = mixed_sets()
    x.requires_grad_()
    loss = agg(x, index).square().sum()
    if name == "lcm":
        loss = loss + agg.associativity_loss(x, 8) + (agg.identity_loss(x) if identity == "learned" else 0)
    loss.backward()
    assert x.grad.abs().sum() > 0
    for pname, p in agg.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_learned_identity_fills_empty_sets():
    lcm = make(identity="learned")
    nn.init.normal_(lcm.e)
    out = lcm(rand(0, D), torch.zeros(0, dtype=torch.long), dim_size=2)
    torch.testing.assert_close(out, lcm.e.detach().expand(2, D), **TOL)


@pytest.mark.parametrize("call, message", [
    (lambda a: a(rand(5), torch.zeros(5, dtype=torch.long)), r"x: expected shape \[n_total, d=6\], got \[5\]"),
    (lambda a: a(rand(5, 4), torch.zeros(5, dtype=torch.long)), r"x: expected shape \[n_total, d=6\], got \[5, 4\]"),
    (lambda a: a(rand(5, D), torch.zeros(4, dtype=torch.long)), r"index: expected shape \[n_total=5\], got \[4\]"),
    (lambda a: a(rand(5, D), torch.zeros(5)), "index: expected an integer dtype, got torch.float32"),
    (lambda a: a(rand(2, D), torch.tensor([0, -1])), "index: expected set ids >= 0, got -1"),
    (lambda a: a(rand(2, D), torch.tensor([0, 3]), dim_size=2), r"dim_size: expected >= index.max\(\) \+ 1 = 4, got 2"),
    (lambda a: a.forward_dense(rand(5, D)), r"x: expected shape \[B, n, d=6\], got \[5, 6\]"),
    (lambda a: a.forward_dense(rand(2, 3, D), torch.ones(2, 4, dtype=torch.bool)),
     r"mask: expected shape \[2, 3\], got \[2, 4\]"),
    (lambda a: a.forward_dense(rand(2, 3, D), torch.ones(2, 3)), "mask: expected dtype torch.bool, got torch.float32"),
])
@pytest.mark.parametrize("name", ["lcm", "gru"])
def test_errors_name_the_argument(name, call, message):
    with pytest.raises(ValueError, match=message):
        call(make(name))


def test_bad_identity_option():
    with pytest.raises(ValueError, match=r"identity: expected one of \('carry', 'learned'\), got 'zero'"):
        LCM(D, identity="zero")


def test_lcm_module_does_not_import_torch_geometric():
    code = "import sys, linscan.nn.lcm; assert not [m for m in sys.modules if m.startswith('torch_geometric')]"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_pyg_adapter_without_torch_geometric(monkeypatch):
    for name in ("torch_geometric", "torch_geometric.nn", "torch_geometric.nn.aggr"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "linscan.nn.pyg", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'linscan\[pyg\]'"):
        import linscan.nn.pyg  # noqa: F401


def test_pyg_sage_conv_equals_lcm_per_node():
    pytest.importorskip("torch_geometric")
    from torch_geometric.nn import SAGEConv

    from linscan.nn.pyg import LCMAggregation

    torch.manual_seed(0)
    conv = SAGEConv(D, 5, aggr=LCMAggregation(D)).double()
    x = rand(6, D)
    # node 5 has no in-edges; edges into a node are not contiguous, their order is the fold order
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 0, 2, 1, 3, 0],
                               [1, 2, 0, 1, 1, 2, 3, 0, 1, 4]])
    out = conv(x, edge_index)
    lcm = conv.aggr_module.lcm
    src, dst = edge_index
    for i in range(6):
        msgs = x[src[dst == i]]
        agg = lcm(msgs, torch.zeros(len(msgs), dtype=torch.long), dim_size=1)[0]
        torch.testing.assert_close(out[i], conv.lin_l(agg) + conv.lin_r(x[i]), **TOL)
    ptr = torch.tensor([0, 2, 2, 5])                                          # CSR form
    rows = rand(5, D)
    torch.testing.assert_close(conv.aggr_module(rows, ptr=ptr), lcm(rows, torch.tensor([0, 0, 2, 2, 2])), **TOL)


def test_baselines_on_one_set_match_their_definitions():
    x, one = rand(7, D), torch.zeros(7, dtype=torch.long)
    torch.testing.assert_close(make("sum")(x, one)[0], x.sum(0), **TOL)
    torch.testing.assert_close(make("mean")(x, one)[0], x.mean(0), **TOL)
    torch.testing.assert_close(make("max")(x, one)[0], x.amax(0), **TOL)
    gru = make("gru")
    h = torch.zeros(1, D, dtype=torch.float64)
    for row in x:
        h = gru.cell(row[None], h)
    torch.testing.assert_close(gru(x, one)[0], h[0], **TOL)
