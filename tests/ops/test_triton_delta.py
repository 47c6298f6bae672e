"""delta_scan, backend "triton": float32 kernels vs the float64 naive reference, gradients included.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET),
so the CPU cases are tiny (one or two heads, a few chunks: small ``chunk_size``). The ``gpu`` cases
check bf16 at realistic sizes against the error of the naive loop run in bf16.
"""

import pytest
import torch

pytest.importorskip("triton")

from linscan.ops import delta_scan  # noqa: E402

from .harness import rel_err  # noqa: E402
from .test_delta import make_inputs  # noqa: E402

TOL = 1e-4                                              # relative L2 error, float32 vs float64


def run(inputs: dict, backend: str, dtype=None, seed: int = 0, grad: bool = True, **options):
    """o, final state and the gradient of every floating input (keyed by name) of a fixed random
    projection of (o, state); inputs cast to ``dtype`` (q, k, v, beta, g), the state kept float32+."""
    x = {}
    for name, t in inputs.items():
        if isinstance(t, torch.Tensor) and t.dtype.is_floating_point:
            cast = t if dtype is None else t.to(torch.float32 if name == "initial_state" else dtype)
            t = cast.detach().clone().requires_grad_(grad)
        x[name] = t
    with torch.set_grad_enabled(grad):
        o, s = delta_scan(**x, backend=backend, output_final_state=True, **options)
    result = {"o": o.detach(), "state": s.detach()}
    if grad:
        gen = torch.Generator().manual_seed(seed)
        w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64)
        w_s = torch.randn(s.shape, generator=gen, dtype=torch.float64)
        ((o.double() * w_o).sum() + (s.double() * w_s).sum()).backward()
        result |= {f"d{n}": t.grad for n, t in x.items() if isinstance(t, torch.Tensor) and t.requires_grad}
    return result


def assert_matches(got: dict, ref: dict, tol: float = TOL):
    assert got.keys() == ref.keys()
    errs = {n: rel_err(got[n], ref[n]) for n in ref}
    assert all(e <= tol for e in errs.values()), errs


def assert_triton_matches_naive(inputs, tol=TOL, **options):
    ref = run(inputs, "naive", **options)                            # float64 inputs: exact reference
    got = run(inputs, "triton", dtype=torch.float32, **options)
    assert got["o"].dtype == torch.float32 and got["state"].dtype == torch.float32
    assert_matches(got, ref, tol)


# ---------------------------------------------------------------- interpreter (CPU) cases

@pytest.mark.parametrize("R, gate, beta_max, T, chunk_size, H, K, V", [
    (None, False, 1.0, 37, 16, 2, 16, 16),     # DeltaNet, partial last chunk
    (None, True, 2.0, 130, 16, 1, 32, 16),     # Gated DeltaNet, negative eigenvalues, 9 chunks, K != V
    (None, True, 2.0, 130, None, 1, 8, 8),     # the default chunk (64) with a tail
    (2, True, 2.0, 37, 8, 2, 16, 8),           # DeltaProduct: 16 rows per chunk
    (3, False, 2.0, 7, 4, 2, 8, 16),           # R = 3: 12 rows in a 16-row tile
    (None, True, 1.0, 1, None, 2, 8, 8),       # T == 1 with autograd: one chunk
    (None, True, 2.0, 40, None, 1, 256, 40),   # K = 256: 32-row chunks; V = 40 in two V tiles of 32
])
def test_matches_naive_with_gradients(R, gate, beta_max, T, chunk_size, H, K, V):
    inputs = make_inputs(1, T, H, K, V, R=R, gate=gate, beta_max=beta_max, seed=T)
    assert_triton_matches_naive(inputs, chunk_size=chunk_size)


def test_no_state_small_keys_scale_batch():
    """B = 2, no initial state, keys not normalised, an explicit scale."""
    inputs = make_inputs(2, 21, 1, 5, 3, R=2, gate=True, beta_max=2.0, normalize=False, state=False, seed=1)
    assert_triton_matches_naive(inputs, chunk_size=8, scale=0.7)


@pytest.mark.parametrize("R", [None, 2])
def test_varlen_matches_naive_per_sequence(R):
    """Packed sequences (B == 1, cu_seqlens) with their own initial and final states, vs the naive
    backend, which runs each sequence on its own."""
    cu = torch.tensor([0, 13, 40, 47], dtype=torch.int32)
    inputs = make_inputs(1, 47, 2, 8, 8, R=R, gate=True, beta_max=2.0, seed=6, N=3)
    assert_triton_matches_naive(inputs, chunk_size=16 // (R or 1), cu_seqlens=cu)


@pytest.mark.parametrize("R, gate", [(None, True), (2, False)])
def test_decode_step_is_one_fused_kernel(R, gate, monkeypatch):
    """T == 1 without autograd runs the fused step kernel (the chunk kernels are forbidden) and a loop
    of steps carrying the state equals the naive scan."""
    from linscan.ops.delta import triton as backend

    monkeypatch.setattr(backend, "_DeltaTriton", None)               # any chunked call would fail
    inputs = make_inputs(2, 5, 2, 8, 12, R=R, gate=gate, beta_max=2.0, seed=5)
    ref = run(inputs, "naive", grad=False)
    state, outs = inputs["initial_state"].float(), []
    for t in range(5):
        step = {n: (x[:, t:t + 1].float() if x is not None and n != "initial_state" else x)
                for n, x in inputs.items()} | {"initial_state": state}
        o, state = delta_scan(**step, backend="triton", output_final_state=True)
        outs.append(o)
    assert_matches({"o": torch.cat(outs, 1), "state": state}, ref, tol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    """16-bit inputs: o and the gradients in the input dtype, the state float32, all finite and close
    to the float32 run within 16-bit tolerance."""
    inputs = make_inputs(1, 24, 1, 16, 16, R=2, gate=True, beta_max=2.0, seed=8)
    low = run(inputs, "triton", dtype=dtype, chunk_size=8)
    f32 = run(inputs, "triton", dtype=torch.float32, chunk_size=8)
    assert low["o"].dtype == dtype and low["state"].dtype == torch.float32
    assert all(low[n].dtype == dtype for n in ("dq", "dk", "dv", "dbeta", "dg"))
    assert all(torch.isfinite(t).all() for t in low.values())
    assert_matches(low, f32, tol=2e-2)


def test_float64_is_delegated_to_chunk():
    inputs = make_inputs(1, 20, 2, 8, 8, R=2, gate=True, beta_max=2.0, seed=3)
    o, s = delta_scan(**inputs, backend="triton", output_final_state=True, chunk_size=4)
    o_ref, s_ref = delta_scan(**inputs, backend="chunk", output_final_state=True, chunk_size=4)
    assert o.dtype == torch.float64
    torch.testing.assert_close((o, s), (o_ref, s_ref), rtol=0, atol=0)


@pytest.mark.parametrize("T", [1, 5])
def test_final_state_only_on_request(T):
    inputs = make_inputs(1, T, 1, 8, 8, gate=True, dtype=torch.float32)
    inputs = {n: (x.float() if isinstance(x, torch.Tensor) else x) for n, x in inputs.items()}
    o, s = delta_scan(**inputs, backend="triton")
    assert s is None and o.shape == (1, T, 1, 8) and torch.isfinite(o).all()


def test_chunk_too_large_is_rejected():
    inputs = make_inputs(1, 8, 1, 4, 4, R=2, dtype=torch.float32)
    inputs = {n: (x.float() if isinstance(x, torch.Tensor) else x) for n, x in inputs.items()}
    with pytest.raises(ValueError, match="chunk_size"):
        delta_scan(**inputs, backend="triton", chunk_size=100)


# ---------------------------------------------------------------- GPU cases (skipped without CUDA)

@pytest.mark.gpu
@pytest.mark.parametrize("R, gate, T", [(None, True, 4096), (None, False, 1000), (2, True, 2048)])
def test_gpu_bf16_error_within_twice_naive(R, gate, T):
    """bf16 on the GPU: the triton error against float64 is at most 2x that of the naive loop run on
    the same bf16 inputs (+1e-3), for the output, the final state and every gradient."""
    inputs = make_inputs(1, T, 4, 128, 128, R=R, gate=gate, beta_max=2.0, seed=11)
    # the reference sees exactly the bf16-rounded inputs
    inputs = {n: (x.to(torch.bfloat16).double().cuda() if n != "initial_state" else x.float().double().cuda())
              if isinstance(x, torch.Tensor) else x for n, x in inputs.items()}
    ref = run(inputs, "naive")
    naive = run(inputs, "naive", dtype=torch.bfloat16)
    got = run(inputs, "triton", dtype=torch.bfloat16)
    errs = {n: (rel_err(got[n], ref[n]), rel_err(naive[n], ref[n])) for n in ref}
    report = ", ".join(f"{n} {a:.1e} (naive {b:.1e})" for n, (a, b) in errs.items())
    print(f"R={R} gate={gate} T={T}: {report}")
    assert all(a <= 2 * b + 1e-3 for a, b in errs.values()), errs
