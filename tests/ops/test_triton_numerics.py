"""Triton backends under extreme log-decays: a full forget (g = -inf) or one very strong decay
(g = -1e4, -1e8) amid ordinary ones (-0.01 .. -0.5), against the float64 naive loop.

Inside a chunk the decays must be sums of log-decays over the tokens they span (ops/segsum.py):
written as differences of cumulative sums b_t - b_s they lose the small decays after the spike
(float32 spacing of b ~ 1e-3 at b ~ -1e4) or give exp(-inf - (-inf)) = NaN. The cases copy
tests/ops/test_decay.py::test_extreme_log_decay (and delta's): one spike mid-chunk at every head,
one on the first token of a chunk at head 1. Tiny sizes (interpreter on CPU): T = 40 over chunks
of 16, K = V = 8.

Tolerance as the chunk tests': every output, state and gradient of the float32 triton run within
twice the float32 naive loop's error, plus FLOOR. Before the fix the decay and delta kernels were
off by ~1e-4 at g = -1e4 and by O(1) or NaN at g = -1e8 and -inf; the mLSTM's (already segment
sums) gave NaN with the sigmoid input gate at f = -inf.
"""

import pytest
import torch

pytest.importorskip("triton")

from linscan.ops import decay_scan, delta_scan, mlstm_scan  # noqa: E402

from .harness import flat, rel_err  # noqa: E402

SPIKES = [float("-inf"), -1e8, -1e4]
B, T, H, K, V, CHUNK = 1, 40, 2, 8, 8, 16
MID, FIRST = 21, 32                     # a spike mid-chunk (every head), one opening a chunk (head 1)
# the gate gradients (reverse cumulative sums over the chunk) carry 2-3x the naive loop's ~1e-7
# even with ordinary gates (the committed kernels too): the floor keeps that from failing
FLOOR = 1e-6


def ordinary_log_decays(gen, *shape) -> torch.Tensor:
    """Log-decays uniform in [-0.5, -0.01] (float64)."""
    return -(0.01 + 0.49 * torch.rand(*shape, generator=gen, dtype=torch.float64))


def with_spikes(x: torch.Tensor, spike: float) -> torch.Tensor:
    """x (B, T, H, ...) with ``spike`` at token MID of every head and at token FIRST of head 1."""
    x = x.clone()
    x[:, MID] = spike
    x[:, FIRST, 1] = spike
    return x


def results(op, inputs: dict, backend: str, dtype: torch.dtype, **options) -> dict:
    """o, final state(s) and the gradient of every floating input of a fixed random projection of
    (o, state), with every floating input (states included) cast to ``dtype``; keyed by name."""
    x = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().to(dtype).clone().requires_grad_(True)
        elif isinstance(value, tuple):
            value = tuple(t.detach().to(dtype).clone().requires_grad_(True) for t in value)
        x[name] = value
    o, state = op(**x, backend=backend, output_final_state=True, **options)
    outs = [o, *flat(state)]
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in outs]
    sum((t.double() * w).sum() for t, w in zip(outs, weights)).backward()
    out = {"o": o.detach(), **{f"state[{j}]": s.detach() for j, s in enumerate(outs[1:])}}
    for name, value in x.items():
        for j, t in enumerate(flat(value) if isinstance(value, (tuple, torch.Tensor)) else []):
            out[f"d{name}[{j}]"] = torch.zeros_like(t) if t.grad is None else t.grad
    return out


def float32_errors(op, inputs: dict, **options) -> dict:
    """{name: (triton error, float32 naive error)}, relative L2 against the float64 naive."""
    ref = results(op, inputs, "naive", torch.float64, **options)
    loop = results(op, inputs, "naive", torch.float32, **options)
    got = results(op, inputs, "triton", torch.float32, **options)
    assert got.keys() == ref.keys()
    return {n: (rel_err(got[n], ref[n]), rel_err(loop[n], ref[n])) for n in ref}


def assert_float32_accurate(op, inputs: dict, label: str, **options):
    errs = float32_errors(op, inputs, **options)
    print(f"{label}: " + ", ".join(f"{n} {e:.1e} ({e_loop:.1e})" for n, (e, e_loop) in errs.items()))
    bad = {n: e for n, e in errs.items() if not e[0] <= 2 * e[1] + FLOOR}
    assert not bad, f"(triton, float32 naive) errors above twice the naive's: {bad}"


@pytest.mark.parametrize("form", ["scalar", "diagonal"])
@pytest.mark.parametrize("spike", SPIKES)
def test_decay_extreme_log_decay(form, spike):
    gen = torch.Generator().manual_seed(12)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    g = ordinary_log_decays(gen, B, T, H, *((K,) if form == "diagonal" else ()))
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    inputs = dict(q=q, k=k, v=v, g=with_spikes(g, spike), initial_state=h0)
    assert_float32_accurate(decay_scan, inputs, f"decay {form} g={spike:g}", scale=K ** -0.5,
                            chunk_size=CHUNK)


@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("spike", SPIKES)
def test_delta_extreme_log_decay(R, spike):
    gen = torch.Generator().manual_seed(12)
    steps = () if R is None else (R,)
    q = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    k = torch.nn.functional.normalize(torch.randn(B, T, *steps, H, K, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, *steps, H, V, generator=gen, dtype=torch.float64)
    beta = 2.0 * torch.rand(B, T, *steps, H, generator=gen, dtype=torch.float64)
    g = ordinary_log_decays(gen, B, T, H)
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    inputs = dict(q=q, k=k, v=v, beta=beta, g=with_spikes(g, spike), initial_state=h0)
    assert_float32_accurate(delta_scan, inputs, f"delta R={R} g={spike:g}", scale=K ** -0.5,
                            chunk_size=CHUNK // (R or 1))


@pytest.mark.parametrize("gate", ["exp", "sigmoid"])
@pytest.mark.parametrize("spike", SPIKES)
def test_mlstm_extreme_forget_gate(gate, spike):
    """lf = logsigmoid(f): f in [0.43, 4.6] gives lf in [-0.5, -0.01]; f = spike gives lf ~ spike."""
    gen = torch.Generator().manual_seed(12)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    i = -3.0 + 6.0 * torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    f = 0.43 + (4.6 - 0.43) * torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    state = (torch.randn(B, H, K, V, generator=gen, dtype=torch.float64),
             torch.randn(B, H, K, generator=gen, dtype=torch.float64),
             -2.0 + 4.0 * torch.rand(B, H, generator=gen, dtype=torch.float64))
    inputs = dict(q=q, k=k, v=v, i=i, f=with_spikes(f, spike), initial_state=state)
    assert_float32_accurate(mlstm_scan, inputs, f"mlstm {gate} f={spike:g}", input_gate=gate,
                            chunk_size=CHUNK)
