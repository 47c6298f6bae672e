"""linear_scan: chunk vs the float64 naive reference (outputs and gradients), reverse, validation."""

import re

import pytest
import torch

from linscan.ops import available, linear_scan
from linscan.ops.scan import chunk

from .harness import forbid, rel_err

STRUCTURES = ["diagonal", "block", "dense"]
TOL = dict(rtol=1e-10, atol=1e-10)


def make_inputs(structure, B=2, T=16, D=6, k=2, *, regime="generic", h0=True, seed=0, dtype=torch.float64):
    """a, b (and h0) for ``structure``; ``regime="near_one"`` puts |A| (its singular values) in [0.97, 1]."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def radius(*shape):
        return 0.97 + 0.03 * torch.rand(*shape, generator=gen, dtype=torch.float64)

    size = {"diagonal": None, "block": k, "dense": D}[structure]
    if structure == "diagonal":
        sign = torch.where(rand(B, T, D) < 0, -1.0, 1.0).double()
        a = sign * radius(B, T, D) if regime == "near_one" else 2 * torch.rand(B, T, D, generator=gen,
                                                                                 dtype=torch.float64) - 1
    elif regime == "near_one":
        # Q diag(r) with Q orthogonal: every singular value in [0.97, 1]
        q, _ = torch.linalg.qr(rand(B, T, D // size, size, size))
        a = q * radius(B, T, D // size, 1, size)
    else:
        a = rand(B, T, D // size, size, size) * (0.6 / size ** 0.5)
    if structure == "dense":
        a = a[:, :, 0]                                                   # (B, T, D, D)
    inputs = dict(a=a, b=rand(B, T, D), h0=rand(B, D) if h0 else None)
    return {n: None if x is None else x.to(dtype) for n, x in inputs.items()}


def forward_backward(inputs, backend, **options):
    x = {n: None if t is None else t.detach().clone().requires_grad_(True) for n, t in inputs.items()}
    h = linear_scan(**x, backend=backend, **options)
    w = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=h.dtype)
    (h * w).sum().backward()
    return h.detach(), {n: t.grad for n, t in x.items() if t is not None}


@pytest.mark.parametrize("regime", ["generic", "near_one"])
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("T, chunk_size", [(1, None), (7, 4), (7, None), (64, 16), (64, None),
                                           (200, 64), (200, 48), (200, 7)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_chunk_matches_naive_with_gradients(structure, reverse, T, chunk_size, with_h0, regime):
    inputs = make_inputs(structure, T=T, regime=regime, h0=with_h0, seed=T)
    h_ref, g_ref = forward_backward(inputs, "naive", reverse=reverse)
    h, g = forward_backward(inputs, "chunk", reverse=reverse, chunk_size=chunk_size)
    torch.testing.assert_close(h, h_ref, **TOL)
    assert g.keys() == g_ref.keys() == {n for n, x in inputs.items() if x is not None}
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], **TOL, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_gradcheck(structure, reverse):
    inputs = make_inputs(structure, B=2, T=5, D=4, k=2, seed=3)
    x = tuple(t.clone().requires_grad_(True) for t in inputs.values())

    def fn(a, b, h0):
        return linear_scan(a, b, h0, reverse=reverse, backend="chunk", chunk_size=2)

    assert torch.autograd.gradcheck(fn, x)
    assert torch.autograd.gradgradcheck(fn, x)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_reverse_is_flipped_forward(structure, backend):
    a, b, h0 = make_inputs(structure, T=50, seed=4).values()
    h = linear_scan(a, b, h0, reverse=True, backend=backend, chunk_size=8)
    h_flip = linear_scan(a.flip(1), b.flip(1), h0, backend=backend, chunk_size=8).flip(1)
    torch.testing.assert_close(h, h_flip, **TOL)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_state_passing(structure, reverse):
    """One scan over T equals a scan over one part carrying its last state into the other."""
    a, b, h0 = make_inputs(structure, T=90, seed=5).values()
    h = linear_scan(a, b, h0, reverse=reverse, chunk_size=16)
    first, second = (slice(0, 33), slice(33, 90)) if not reverse else (slice(33, 90), slice(0, 33))
    h1 = linear_scan(a[:, first], b[:, first], h0, reverse=reverse, chunk_size=16)
    carry = h1[:, -1] if not reverse else h1[:, 0]
    h2 = linear_scan(a[:, second], b[:, second], carry, reverse=reverse, chunk_size=16)
    parts = [h1, h2] if not reverse else [h2, h1]
    torch.testing.assert_close(torch.cat(parts, dim=1), h, **TOL)


def test_block_of_size_d_is_dense_and_diagonal_blocks_are_diagonal():
    a, b, h0 = make_inputs("dense", T=20, D=4, seed=6).values()
    torch.testing.assert_close(linear_scan(a[:, :, None], b, h0), linear_scan(a, b, h0), **TOL)
    d, b, h0 = make_inputs("diagonal", T=20, D=4, seed=7).values()
    blocks = torch.diag_embed(d).reshape(2, 20, 4, 4)[:, :, None]            # (B, T, 1, D, D)
    torch.testing.assert_close(linear_scan(blocks, b, h0), linear_scan(d, b, h0), **TOL)


def test_decode_step_does_not_chunk(monkeypatch):
    forbid(monkeypatch, chunk, "_chunked")
    a, b, h0 = make_inputs("block", T=1).values()
    torch.testing.assert_close(linear_scan(a, b, h0, backend="chunk"), linear_scan(a, b, h0, backend="naive"))


def test_default_chunk_and_registry():
    assert [chunk.default_chunk(T) for T in (1, 2, 100, 256, 257, 16384)] == [16, 16, 16, 16, 17, 128]
    assert {"chunk", "naive"} <= set(available()["scan"])


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_float32_and_low_precision(structure, backend):
    ref = make_inputs(structure, T=300, regime="near_one", seed=8)
    h_ref = linear_scan(**ref, backend="naive")
    h32 = linear_scan(**{n: x.float() for n, x in ref.items()}, backend=backend)
    assert h32.dtype == torch.float32 and rel_err(h32, h_ref) < 1e-5
    low = {n: x.to(torch.bfloat16) for n, x in ref.items()}
    h16 = linear_scan(**low, backend=backend)
    assert h16.dtype == torch.bfloat16
    h16_ref = linear_scan(**{n: x.double() for n, x in low.items()}, backend="naive")
    assert rel_err(h16, h16_ref) < 1e-2


B, T, D = 2, 5, 6


def good():
    return dict(a=torch.rand(B, T, D), b=torch.randn(B, T, D), h0=torch.randn(B, D))


CASES = [
    ("a rank", {"a": torch.rand(B, T)}, ValueError,
     r"a: expected 3 dims [B, T, D] (diagonal), 4 dims [B, T, D, D] (dense) or 5 dims [B, T, D/k, k, k] "
     r"(block-diagonal), got 2 dims [2, 5]"),
    ("b rank", {"b": torch.randn(B, T, D, 1)}, ValueError, r"b: expected 3 dims [B, T, D], got 4 dims [2, 5, 6, 1]"),
    ("block k", {"a": torch.rand(B, T, 1, 4, 4)}, ValueError,
     r"a: expected a block size k dividing D = 6 (that of b), got k = 4 from shape [2, 5, 1, 4, 4]"),
    ("block count", {"a": torch.rand(B, T, 2, 2, 2)}, ValueError,
     r"a: expected shape [B, T, D/k, k, k] = [2, 5, 3, 2, 2], got [2, 5, 2, 2, 2]"),
    ("block not square", {"a": torch.rand(B, T, 3, 3, 2)}, ValueError,
     r"a: expected shape [B, T, D/k, k, k] = [2, 5, 3, 2, 2], got [2, 5, 3, 3, 2]"),
    ("diagonal batch", {"a": torch.rand(B + 1, T, D)}, ValueError,
     r"a: expected shape [B, T, D] = [2, 5, 6], got [3, 5, 6]"),
    ("diagonal time", {"a": torch.rand(B, T - 1, D)}, ValueError,
     r"a: expected shape [B, T, D] = [2, 5, 6], got [2, 4, 6]"),
    ("dense width", {"a": torch.rand(B, T, D, D + 1)}, ValueError,
     r"a: expected shape [B, T, D, D] = [2, 5, 6, 6], got [2, 5, 6, 7]"),
    ("h0 shape", {"h0": torch.randn(B, D + 1)}, ValueError, r"h0: expected shape [B, D] = [2, 6], got [2, 7]"),
    ("h0 rank", {"h0": torch.randn(B, 1, D)}, ValueError, r"h0: expected shape [B, D] = [2, 6], got [2, 1, 6]"),
    ("a dtype", {"a": torch.rand(B, T, D, dtype=torch.float64)}, TypeError,
     r"a: expected dtype torch.float32 (that of b), got torch.float64"),
    ("b int", {"b": torch.ones(B, T, D, dtype=torch.int64)}, TypeError,
     r"b: expected a floating-point dtype, got torch.int64"),
    ("a list", {"a": [1.0]}, TypeError, r"a: expected a torch.Tensor, got list"),
    ("a device", {"a": torch.rand(B, T, D, device="meta")}, ValueError,
     r"a: expected device cpu (that of b), got meta"),
    ("empty", {"a": torch.rand(B, 0, D), "b": torch.randn(B, 0, D)}, ValueError,
     r"b: expected non-empty T and D, got shape [2, 0, 6]"),
]


@pytest.mark.parametrize("label, change, error, message", CASES, ids=[c[0] for c in CASES])
def test_validation_errors(label, change, error, message):
    with pytest.raises(error, match=re.escape(message)):
        linear_scan(**(good() | change))


def test_bad_backend_and_chunk_size():
    with pytest.raises(ValueError, match=r"backend: expected one of \['chunk', 'naive', .*'auto'\] for family 'scan', got 'cuda'"):
        linear_scan(**good(), backend="cuda")
    with pytest.raises(ValueError, match=r"chunk_size: expected a positive int or None, got 0"):
        linear_scan(**good(), chunk_size=0)
