"""mlstm_scan, backend="triton": outputs, final states and every gradient against the float64 naive loop.

Without CUDA the kernels run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
on CPU tensors, so sizes stay tiny: a few programs, chunk_size=16 to get several chunks cheaply.
With CUDA the same cases run on the GPU, and the tests marked ``gpu`` add realistic sizes in bf16.
"""

import pytest
import torch

pytest.importorskip("triton")

from linscan.ops import mlstm_scan  # noqa: E402

from .harness import flat, rel_err  # noqa: E402
from .test_mlstm import make_inputs  # noqa: E402

GATES = ["exp", "sigmoid"]
TIME_KEYS = ("q", "k", "v", "i", "f")
TOL = 1e-4                      # relative L2 error, float32 kernels vs the float64 reference
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cast(inputs: dict, dtype=torch.float32, keys=("q", "k", "v", "i", "f", "initial_state")) -> dict:
    """The inputs on DEVICE with ``keys`` in ``dtype`` (a state tuple in float32 whatever ``dtype``)."""
    out = {n: (x.to(DEVICE) if isinstance(x, torch.Tensor) else
               tuple(t.to(DEVICE) for t in x) if isinstance(x, tuple) else x) for n, x in inputs.items()}
    for name in keys:
        x = out.get(name)
        if isinstance(x, tuple):
            out[name] = tuple(t.float() for t in x)
        elif isinstance(x, torch.Tensor):
            out[name] = x.to(dtype)
    return out


def _device(inputs: dict) -> dict:
    return _cast(inputs, keys=())


def _leaves(inputs: dict) -> dict:
    return {n: (x.detach().clone().requires_grad_(True) if isinstance(x, torch.Tensor) else
                tuple(t.detach().clone().requires_grad_(True) for t in x) if isinstance(x, tuple) else x)
            for n, x in inputs.items()}


def run(inputs: dict, backend: str, *, seed: int = 0, **options):
    """(o, state, grads) of a fixed random projection of (o, *state); the projection weights are drawn
    in float64 and rounded to bf16 whatever the dtype (exact in every dtype used), so runs in
    different dtypes differentiate the same loss. grads keyed "name[j]"."""
    x = _leaves(inputs)
    o, state = mlstm_scan(**x, backend=backend, output_final_state=True, **options)
    gen = torch.Generator().manual_seed(seed)
    outs = [o, *flat(state)]
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).bfloat16().to(t.device, t.dtype)
               for t in outs]
    sum((t * w).sum() for t, w in zip(outs, weights)).backward()
    grads = {f"{n}[{j}]": t.grad for n, v in x.items() if isinstance(v, (tuple, torch.Tensor))
             for j, t in enumerate(flat(v))}
    return o.detach(), [s.detach() for s in flat(state)], grads


def errors(result, reference) -> dict:
    """Relative L2 errors of every output, state and gradient (absolute where the reference is 0)."""
    (o, s, g), (o_r, s_r, g_r) = result, reference
    pairs = {"o": (o, o_r), **{f"state[{j}]": p for j, p in enumerate(zip(s, s_r))},
             **{f"grad {n}": (g[n], g_r[n]) for n in g_r}}
    assert set(g) == set(g_r)
    out = {}
    for name, (a, r) in pairs.items():
        assert a.shape == r.shape and torch.isfinite(a).all(), name
        out[name] = rel_err(a, r) if r.norm() > 0 else a.double().abs().max().item()
    return out


def assert_matches_naive(inputs: dict, tol: float = TOL, **options):
    """float32 triton vs the float64 naive: outputs, final states and all gradients within ``tol``."""
    errs = errors(run(_cast(inputs), "triton", **options), run(_device(inputs), "naive", **options))
    bad = {n: e for n, e in errs.items() if not e <= tol}
    assert not bad, bad


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_naive_with_gradients(gate, normalize):
    """T = 37 over three chunks of 16 (a partial last chunk), two heads, initial and final state;
    eps = 1e-2 so that the normaliser's eps matters."""
    inputs = make_inputs(1, 37, 2, 8, 8, seed=1)
    assert_matches_naive(inputs, input_gate=gate, normalize=normalize, chunk_size=16, eps=1e-2)


@pytest.mark.parametrize("B, T, H, K, V, chunk_size, gate, with_state", [
    (2, 1, 1, 8, 8, None, "exp", True),           # T == 1 with gradients: one partial chunk
    (2, 7, 1, 16, 8, 16, "sigmoid", False),       # K != V, no initial state, batch of 2
    (1, 64, 1, 8, 16, 16, "sigmoid", True),       # T a multiple of the chunk
    (1, 130, 1, 32, 16, 32, "exp", True),         # K = 32, five chunks of 32, partial last one
    (1, 20, 1, 80, 72, 16, "exp", True),          # several K and V tiles (state grid 2 x 2), masked
])
def test_shapes_match_naive(B, T, H, K, V, chunk_size, gate, with_state):
    inputs = make_inputs(B, T, H, K, V, seed=T, state=with_state)
    assert_matches_naive(inputs, input_gate=gate, chunk_size=chunk_size)


@pytest.mark.parametrize("gate", GATES)
def test_extreme_gates_within_twice_float32_naive(gate):
    """Input gates up to +30, forget gates down to -30: every error (outputs, states, gradients)
    against float64 within twice that of the float32 naive loop (the max-state and the segment
    sums keep the kernels as accurate as the token loop)."""
    inputs = make_inputs(1, 100, 1, 8, 4, seed=8, i_range=(-30.0, 30.0), f_range=(-30.0, 30.0))
    inputs["i"][0, 10:20] = 30.0
    inputs["f"][0, 40:60] = -30.0
    options = dict(input_gate=gate, chunk_size=16)
    reference = run(_device(inputs), "naive", **options)
    errs = errors(run(_cast(inputs), "triton", **options), reference)
    yardstick = errors(run(_cast(inputs), "naive", **options), reference)
    bad = {n: (e, yardstick[n]) for n, e in errs.items() if not e <= 2 * yardstick[n] + 1e-6}
    assert not bad, bad


def test_max_state_gradient_scan_in_blocks(monkeypatch):
    """The backward scan of the max-state's gradient over chunks runs in blocks (64 chunks on a
    GPU); blocks of 2 here, so four chunks take two blocks and carry between them."""
    from linscan.ops.mlstm import triton as backend

    monkeypatch.setattr(backend, "SCAN_BLOCK", 2)
    inputs = make_inputs(1, 60, 1, 8, 8, seed=6, i_range=(-6.0, 6.0))
    assert_matches_naive(inputs, chunk_size=16)


@pytest.mark.parametrize("gate", GATES)
def test_state_passing(gate):
    """One pass equals two passes carrying the final state (the second from an initial state)."""
    x = _cast(make_inputs(1, 40, 1, 8, 8, seed=2))
    options = dict(input_gate=gate, backend="triton", output_final_state=True, chunk_size=16)
    o, s = mlstm_scan(**x, **options)
    first = {n: (t[:, :23] if n in TIME_KEYS else t) for n, t in x.items()}
    rest = {n: (t[:, 23:] if n in TIME_KEYS else t) for n, t in x.items()}
    o1, s1 = mlstm_scan(**first, **options)
    o2, s2 = mlstm_scan(**(rest | {"initial_state": s1}), **options)
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), o, rtol=1e-5, atol=1e-5)
    for a, b in zip(s2, s):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate", GATES)
def test_varlen_matches_naive_per_sequence(gate):
    """Packed sequences of lengths 1, 17 and 32 (B == 1, cu_seqlens; chunks of 16 that start
    mid-tensor, a one-token chunk, an exact multiple), each from its own initial state row:
    outputs, final states and gradients against the naive backend's per-sequence loop."""
    cu = torch.tensor([0, 1, 18, 50], dtype=torch.int32, device=DEVICE)
    inputs = make_inputs(1, 50, 1, 8, 8, seed=5, N=3)
    assert_matches_naive(inputs, input_gate=gate, cu_seqlens=cu, chunk_size=16)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("normalize", [True, False])
def test_decode_step_matches_naive(monkeypatch, gate, normalize):
    """T == 1 without gradients runs the fused step kernel (never the chunk kernels); a loop of
    steps carrying the state equals the naive scan."""
    from linscan.ops.mlstm import triton as backend

    def boom(*args, **kwargs):
        raise AssertionError("the T == 1 decode step went through the chunk kernels")

    monkeypatch.setattr(backend.MlstmTritonFunction, "apply", boom)
    x64 = _device(make_inputs(2, 4, 2, 8, 72, seed=3))             # V = 72: two V tiles
    x = _cast(x64)
    o_ref, s_ref = mlstm_scan(**x64, input_gate=gate, normalize=normalize, backend="naive", output_final_state=True)
    state, outs = x["initial_state"], []
    with torch.no_grad():
        for t in range(4):
            step = {n: (v[:, t:t + 1] if n in TIME_KEYS else v) for n, v in x.items()} | {"initial_state": state}
            o_t, state = mlstm_scan(**step, input_gate=gate, normalize=normalize, backend="triton",
                                    output_final_state=True)
            assert o_t.shape == (2, 1, 2, 72) and o_t.dtype == torch.float32
            outs.append(o_t)
    assert rel_err(torch.cat(outs, dim=1), o_ref) <= TOL
    for a, b in zip(state, s_ref):
        assert a.dtype == torch.float32
        assert (rel_err(a, b) if b.norm() > 0 else a.abs().max().item()) <= TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_smoke(dtype):
    """bf16/fp16 q, k, v: o in that dtype, float32 states, finite gradients in the input dtype,
    all close to the float32 run within the input precision."""
    x32 = _cast(make_inputs(1, 40, 1, 16, 16, seed=7))
    low = _cast(x32, dtype, keys=("q", "k", "v"))
    o, s, g = run(low, "triton", chunk_size=16)
    o32, s32, g32 = run(x32, "triton", chunk_size=16)
    assert o.dtype == dtype and all(t.dtype == torch.float32 for t in s)
    assert all(g[f"{n}[0]"].dtype == dtype for n in "qkv")
    for name, a, b in [("o", o, o32), *zip(("C", "n", "m"), s, s32), *((n, g[n], g32[n]) for n in g32)]:
        assert torch.isfinite(a).all(), name
        assert (rel_err(a, b) if b.norm() > 0 else a.double().abs().max().item()) <= 3e-2, name
    with torch.no_grad():                   # inference writes o in the input dtype directly
        o_inf, s_inf = mlstm_scan(**low, backend="triton", output_final_state=True, chunk_size=16)
    assert o_inf.dtype == dtype and rel_err(o_inf, o) <= 1e-2
    for a, b in zip(s_inf, s):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_float64_delegates_to_chunk():
    x = _device(make_inputs(1, 20, 1, 4, 4, seed=4))
    o, s = mlstm_scan(**x, backend="triton", output_final_state=True)
    o_c, s_c = mlstm_scan(**x, backend="chunk", output_final_state=True)
    assert o.dtype == torch.float64
    torch.testing.assert_close(o, o_c, rtol=0, atol=0)


def low_precision_errors(dtype, T, H, K, V, gate, **options):
    """Relative errors (outputs, final states, every gradient) of triton and of the naive loop, both
    on ``dtype`` q, k, v (gates and state float32), against the float64 naive on the same rounded
    inputs: ``(triton, naive)`` dicts."""
    x = make_inputs(1, T, H, K, V, seed=T)
    low = _cast(_cast(x, dtype, keys=("q", "k", "v")), keys=("i", "f", "initial_state"))
    x64 = _cast(low, torch.float64, keys=("q", "k", "v", "i", "f"))
    x64["initial_state"] = tuple(t.double() for t in low["initial_state"])
    reference = run(x64, "naive", input_gate=gate, **options)
    errs = errors(run(low, "triton", input_gate=gate, **options), reference)
    yardstick = errors(run(low, "naive", input_gate=gate, **options), reference)
    print({n: f"{e:.1e} (naive {yardstick[n]:.1e})" for n, e in errs.items()})
    return errs, yardstick


def assert_bf16_within_twice_naive_bf16(T, H, K, V, gate, **options):
    """Each bf16 error at most twice that of the naive loop on the bf16 inputs, plus 1e-3
    (flash-attention's criterion)."""
    errs, yardstick = low_precision_errors(torch.bfloat16, T, H, K, V, gate, **options)
    bad = {n: (e, yardstick[n]) for n, e in errs.items() if not e <= 2 * yardstick[n] + 1e-3}
    assert not bad, bad


def test_fp16_products_as_accurate_as_float32():
    """16-bit inputs: the float32 operands of the matrix products (weighted keys, states, scores)
    enter as hi + lo pairs, so final states and gate / initial-state gradients (float32 outputs)
    keep float32 accuracy, as in the naive loop; rounding them to fp16 once would cost ~1e-4.
    (fp16, because the interpreter cannot multiply bf16 tiles; the code path is the same.)"""
    errs, yardstick = low_precision_errors(torch.float16, 40, 1, 16, 16, "exp", chunk_size=16)
    for name in ["state[0]", "state[1]", "grad i[0]", "grad f[0]", "grad initial_state[0]",
                 "grad initial_state[1]", "grad initial_state[2]"]:
        assert errs[name] <= 2 * yardstick[name] + 1e-5, (name, errs[name], yardstick[name])
    for name in ["o", "grad q[0]", "grad k[0]", "grad v[0]"]:             # fp16 outputs
        assert errs[name] <= 2 * yardstick[name] + 1e-4, (name, errs[name], yardstick[name])


@pytest.mark.parametrize("gate", GATES)
def test_bf16_criterion_small(gate):
    """The GPU tests' bf16 comparison at interpreter size, so that it runs in CI too."""
    assert_bf16_within_twice_naive_bf16(40, 1, 16, 16, gate, chunk_size=16)


# ----------------------------------------------------------------------------- GPU (CUDA only)

@pytest.mark.gpu
@pytest.mark.parametrize("T", [1000, 4096])
@pytest.mark.parametrize("gate", GATES)
def test_gpu_bf16_within_twice_naive_bf16(T, gate):
    """H = 4, K = V = 128, default chunk (64), bf16."""
    assert_bf16_within_twice_naive_bf16(T, 4, 128, 128, gate)
