"""decay_scan, backend="triton": the kernels against the float64 naive reference.

Without CUDA the kernels run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1) on CPU tensors, so the sizes here stay tiny and few programs
are launched (small B, H). Tests marked ``gpu`` run on CUDA at real sizes.
"""

import pytest
import torch

pytest.importorskip("triton")

from linscan.ops import decay_scan  # noqa: E402

from .harness import grads_of, leaves, rel_err  # noqa: E402
from .test_decay import G_FORMS, make_inputs  # noqa: E402

TOL = 1e-4          # relative L2 error, float32 kernels vs the float64 reference


def run(inputs: dict, backend: str, *, dtype=None, **options):
    """(o, state, grads) of a fixed random projection of (o, final state).

    The projection is drawn in float64 whatever the dtype, so every backend and dtype
    backpropagates the same weights (harness.forward_backward draws them per dtype).
    q, k, v (and g when ``dtype`` is float32) are cast to ``dtype``; states stay float32.
    """
    if dtype is not None:
        cast = ("q", "k", "v", "g") if dtype == torch.float32 else ("q", "k", "v")
        states = {"initial_state": torch.float32}
        inputs = {n: (x.to(dtype) if n in cast and x is not None else
                      x.to(states[n]) if n in states and x is not None else x) for n, x in inputs.items()}
    x = leaves(inputs)
    o, state = decay_scan(**x, backend=backend, output_final_state=True, **options)
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype) for t in (o, state)]
    sum((t * w).sum() for t, w in zip((o, state), weights)).backward()
    return o.detach(), state.detach(), grads_of(x)


def errors(inputs: dict, **options) -> dict:
    """Relative errors of the float32 triton backend against the float64 naive, every output and gradient."""
    o_ref, s_ref, g_ref = run(inputs, "naive", **options)
    o, s, g = run(inputs, "triton", dtype=torch.float32, **options)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert g.keys() == g_ref.keys()
    return {"o": rel_err(o, o_ref), "state": rel_err(s, s_ref)} | {n: rel_err(g[n], g_ref[n]) for n in g_ref}


def assert_small(errs: dict, tol: float = TOL):
    bad = {n: e for n, e in errs.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errs})"


@pytest.mark.parametrize("form", G_FORMS)
@pytest.mark.parametrize("B, T, H, chunk_size, state", [(2, 7, 2, 16, True), (1, 37, 2, 16, False),
                                                       (1, 130, 1, 32, True)])
def test_matches_naive_with_gradients(form, B, T, H, chunk_size, state):
    """Several chunks, a ragged last chunk, with and without an initial state; K != V."""
    inputs = make_inputs(B, T, H, 16, 12, form, seed=T, state=state)
    assert_small(errors(inputs, chunk_size=chunk_size, scale=0.3))


@pytest.mark.parametrize("form", ["scalar", "diagonal"])
def test_strong_decay_default_chunk_odd_sizes(form):
    """C = 64 (four 16-token sub-blocks), log-decay down to -5 per token: e^{-b} would overflow."""
    inputs = make_inputs(1, 130, 1, 32, 20, form, seed=3, strength=5.0)
    assert_small(errors(inputs))


def test_tiles_over_k_and_v():
    """K and V larger than one tile (64): the kernels loop over K tiles and split V."""
    inputs = make_inputs(1, 20, 1, 80, 72, "diagonal", seed=4)
    assert_small(errors(inputs, chunk_size=16))


@pytest.mark.parametrize("form", ["head", "diagonal"])
def test_single_token_with_gradients(form):
    """T == 1 under autograd goes through the chunked kernels (one one-token chunk)."""
    assert_small(errors(make_inputs(2, 1, 2, 8, 8, form, seed=5)))


def test_gradient_through_the_final_state_only():
    """A loss on the final state alone (no output gradient reaches the backward)."""
    inputs = make_inputs(1, 20, 1, 8, 8, "diagonal", seed=13)
    grads = {}
    for backend, dtype in (("naive", torch.float64), ("triton", torch.float32)):
        x = leaves({n: x.to(dtype) for n, x in inputs.items()})
        _, state = decay_scan(**x, backend=backend, output_final_state=True, chunk_size=16)
        state.square().sum().backward()
        grads[backend] = grads_of(x)
    assert_small({n: rel_err(grads["triton"][n], grads["naive"][n]) for n in grads["naive"]})


@pytest.mark.parametrize("form", G_FORMS)
def test_varlen_matches_naive_per_sequence(form):
    cu = torch.tensor([0, 5, 22, 41], dtype=torch.int32)          # 3 sequences, 1 to 2 chunks each
    inputs = make_inputs(1, 41, 2, 8, 8, form, seed=6, N=3)
    assert_small(errors(inputs, cu_seqlens=cu, chunk_size=16))


@pytest.mark.parametrize("form", G_FORMS)
def test_decode_step_kernel(form, monkeypatch):
    """T == 1 without autograd runs the fused step kernel (the chunk path is forbidden) and
    a loop of steps carrying the state equals the naive scan."""
    from linscan.ops.decay import triton as decay_triton_module

    def boom(*args, **kwargs):
        raise AssertionError("the T == 1 decode step went through the chunked kernels")

    monkeypatch.setattr(decay_triton_module.DecayTriton, "apply", boom)
    inputs = make_inputs(2, 6, 2, 8, 5, form, seed=7)
    o_ref, s_ref = decay_scan(**inputs, backend="naive", output_final_state=True)
    state = inputs["initial_state"].float()
    outs = []
    for t in range(6):
        step = {n: (x[:, t:t + 1] if n in ("q", "k", "v") or (n == "g" and x is not None and x.dim() > 1)
                    else x) for n, x in inputs.items()}
        step = {n: (x.float() if isinstance(x, torch.Tensor) else x) for n, x in step.items()}
        o_t, state = decay_scan(**step | {"initial_state": state}, backend="triton", output_final_state=True)
        assert o_t.shape == (2, 1, 2, 5) and o_t.dtype == torch.float32 and state.dtype == torch.float32
        outs.append(o_t)
    assert rel_err(torch.cat(outs, dim=1), o_ref) <= TOL
    assert rel_err(state, s_ref) <= TOL
    o_none, s_none = decay_scan(**step | {"initial_state": None}, backend="triton")
    assert s_none is None and o_none.shape == (2, 1, 2, 5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    """16-bit q, k, v: o in q's dtype, float32 states, finite gradients, close to the float32 result."""
    inputs = make_inputs(1, 24, 1, 16, 16, "scalar", seed=8)
    o16, s16, g16 = run(inputs, "triton", dtype=dtype, chunk_size=16)
    o32, s32, g32 = run(inputs, "triton", dtype=torch.float32, chunk_size=16)
    assert o16.dtype == dtype and s16.dtype == torch.float32
    assert g16["q[0]"].dtype == dtype and g16["g[0]"].dtype == torch.float64
    pairs = {"o": (o16, o32), "state": (s16, s32)} | {n: (g16[n], g32[n]) for n in g32}
    for name, (a, b) in pairs.items():
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < 2e-2, (name, rel_err(a, b))


def test_float64_runs_on_chunk_backend():
    """float64 inputs are delegated to the chunk backend: exact to float64 rounding."""
    inputs = make_inputs(1, 20, 1, 4, 4, "diagonal", seed=9)
    o_ref, s_ref, g_ref = run(inputs, "naive", chunk_size=8)
    o, s, g = run(inputs, "triton", chunk_size=8)
    assert o.dtype == torch.float64
    assert_small({"o": rel_err(o, o_ref), "state": rel_err(s, s_ref)}
                 | {n: rel_err(g[n], g_ref[n]) for n in g_ref}, tol=1e-12)


def test_chunk_size_rounds_to_a_kernel_size():
    """chunk_size 20 runs as C = 32; the result does not depend on C."""
    inputs = make_inputs(1, 45, 1, 8, 8, "scalar", seed=10, state=False)
    f32 = {n: x.float() for n, x in inputs.items()}
    a = decay_scan(**f32, backend="triton", chunk_size=20)[0]
    b = decay_scan(**f32, backend="triton", chunk_size=64)[0]
    assert rel_err(a, b) <= 1e-6


# ----------------------------------------------------------------------------- shared kernels

@pytest.mark.parametrize("gate", ["none", "scalar", "diagonal"])
def test_shared_cumsum_and_state_passing_against_loops(gate):
    """ops/shared/triton.py on a varlen layout: chunk_cumsum (both directions) and state_passing
    (forward and reverse) against plain PyTorch loops over the chunks of every sequence."""
    from linscan.ops.shared.triton import chunk_cumsum, state_passing, varlen_layout

    gen = torch.Generator().manual_seed(14)
    cu, C, H, K, V = [0, 5, 40, 77], 16, 2, 5, 3
    layout = varlen_layout(torch.tensor(cu, dtype=torch.int32), C)
    assert layout.chunk_index.tolist() == [[0, 0], [1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]]
    g = -torch.rand(77, H, K, generator=gen)
    g = {"none": None, "scalar": g[..., 0], "diagonal": g}[gate]
    pieces = [(c0, min(c0 + C, eos)) for bos, eos in zip(cu, cu[1:]) for c0 in range(bos, eos, C)]
    if g is not None:
        b = chunk_cumsum(g, layout)
        torch.testing.assert_close(b, torch.cat([g[s:e].cumsum(0) for s, e in pieces]))
        rev = torch.cat([g[s:e].flip(0).cumsum(0).flip(0) for s, e in pieces])
        torch.testing.assert_close(chunk_cumsum(g, layout, reverse=True), rev)
    u = torch.randn(len(pieces), H, K, V, generator=gen)
    x0 = torch.randn(3, H, K, V, generator=gen)
    offsets = layout.chunk_offsets.tolist()
    for reverse in (False, True):
        states, final = state_passing(u, None if g is None else b, layout, x0=x0, reverse=reverse)
        for n in range(3):
            x = x0[n]
            order = range(offsets[n], offsets[n + 1])
            for c in (reversed(order) if reverse else order):
                torch.testing.assert_close(states[c], x)
                decay = torch.ones(H, 1, 1) if g is None else b[pieces[c][1] - 1].exp().view(H, -1, 1)
                x = decay * x + u[c]
            torch.testing.assert_close(final[n], x)


# ----------------------------------------------------------------------------- GPU, real sizes, bf16

def bf16_errors(form, B, T, H, K, V, device):
    """Relative errors vs float64 of triton (bf16 inputs) and of naive run on the same bf16 inputs."""
    inputs = make_inputs(B, T, H, K, V, form, seed=11)
    inputs["q"] = inputs["q"] * 0.5                    # keep bf16 outputs well-scaled
    bf16 = {n: (x.to(torch.bfloat16).to(torch.float64) if n in ("q", "k", "v") else x) for n, x in inputs.items()}
    bf16 = {n: (x.to(device) if isinstance(x, torch.Tensor) else x) for n, x in bf16.items()}
    ref = run(bf16, "naive")
    out = {backend: run(bf16, backend, dtype=torch.bfloat16) for backend in ("triton", "naive")}
    names = ["o", "state", *ref[2]]
    result = {}
    for backend, (o, s, g) in out.items():
        result[backend] = dict(zip(names, [rel_err(o, ref[0]), rel_err(s, ref[1])]
                                   + [rel_err(g[n], ref[2][n]) for n in ref[2]]))
    return result["triton"], result["naive"]


def assert_bf16_within_naive(form, B, T, H, K, V, device):
    tri, naive = bf16_errors(form, B, T, H, K, V, device)
    print(f"bf16 {form} T={T}: triton {tri} naive {naive}")
    bad = {n: (tri[n], naive[n]) for n in tri if not tri[n] <= 2 * naive[n] + 1e-3}
    assert not bad, bad


def test_bf16_error_check_runs_small():
    """The GPU test's comparison itself, at interpreter size (so it is exercised in CI)."""
    assert_bf16_within_naive("diagonal", 1, 24, 1, 16, 16, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("form, T", [(form, 1000) for form in G_FORMS] + [("scalar", 4096), ("diagonal", 4096)])
def test_gpu_bf16_within_twice_naive_bf16_error(form, T):
    assert_bf16_within_naive(form, 1, T, 4, 128, 128, "cuda")


@pytest.mark.gpu
def test_gpu_varlen_and_float32():
    inputs = make_inputs(1, 3000, 4, 128, 128, "diagonal", seed=12, N=3)
    inputs = {n: (x.cuda() if isinstance(x, torch.Tensor) else x) for n, x in inputs.items()}
    cu = torch.tensor([0, 1000, 1001, 3000], dtype=torch.int32, device="cuda")
    assert_small(errors(inputs, cu_seqlens=cu), tol=1e-4)
