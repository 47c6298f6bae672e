"""linear_scan's triton backend (diagonal A) under the interpreter (GPU when present) vs the float64 loop."""

import pytest
import torch

pytest.importorskip("triton")

from linscan.ops import linear_scan  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make(B, T, D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(B, T, D, generator=gen, dtype=torch.float64) * 1.2 - 0.1      # some negative, some > 1
    b = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B, D, generator=gen, dtype=torch.float64)
    return a, b, h0


def run(backend, a, b, h0, reverse, dtype):
    leaves = [x.to(DEVICE, dtype).requires_grad_() if x is not None else None for x in (a, b, h0)]
    h = linear_scan(*leaves, reverse=reverse, backend=backend)
    w = torch.randn(h.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    (h.double() * w.to(h.device)).sum().backward()
    return [h.detach().double().cpu()] + [x.grad.double().cpu() for x in leaves if x is not None]


@pytest.mark.parametrize("T", [1, 7, 64, 130])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
def test_triton_matches_float64_loop_with_gradients(T, reverse, with_h0):
    a, b, h0 = make(2, T, 40)
    h0 = h0 if with_h0 else None
    got = run("triton", a, b, h0, reverse, torch.float32)
    ref = run("naive", a, b, h0, reverse, torch.float64)
    for name, g, r in zip(["h", "grad a", "grad b", "grad h0"], got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_bf16_input_keeps_dtype_and_accumulates_in_float32():
    a, b, h0 = make(1, 100, 16, seed=2)
    h = linear_scan(a.to(DEVICE, torch.bfloat16), b.to(DEVICE, torch.bfloat16), backend="triton")
    ref = linear_scan(a.bfloat16().double(), b.bfloat16().double(), backend="naive")
    assert h.dtype == torch.bfloat16
    torch.testing.assert_close(h.double().cpu(), ref, rtol=2e-2, atol=2e-2)


def test_blocks_and_float64_go_to_the_chunk_backend():
    a = torch.randn(1, 9, 3, 2, 2, dtype=torch.float64) * 0.5
    b = torch.randn(1, 9, 6, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(a, b, backend="triton"), linear_scan(a, b, backend="naive"))
    a, b, _ = make(1, 9, 4)
    torch.testing.assert_close(linear_scan(a, b, backend="triton"), linear_scan(a, b, backend="naive"),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_long_sequence_on_gpu():
    a, b, h0 = make(4, 65536, 256, seed=3)
    a = a.clamp(0.5, 0.999)
    h = linear_scan(a.cuda().float(), b.cuda().float(), h0.cuda().float(), backend="triton")
    ref = linear_scan(a.cuda(), b.cuda(), h0.cuda(), backend="chunk")
    assert ((h.double() - ref).norm() / ref.norm()).item() < 1e-5
