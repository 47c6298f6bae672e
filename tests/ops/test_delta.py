"""delta_scan: chunk vs the float64 naive reference (DeltaNet, Gated DeltaNet, DeltaProduct),
states, decode, varlen, precision, dtypes, validation."""

import pytest
import torch
import torch.nn.functional as F

from linscan.ops import delta_scan

from .harness import (forbid, assert_close, assert_decode_matches, assert_matches_naive, assert_state_passing,
                      assert_float32_precision, assert_varlen_matches_loop, rel_err)

TIME_KEYS = ("q", "k", "v", "beta", "g")


def make_inputs(B, T, H, K, V, *, R=None, gate=False, beta_max=1.0, normalize=True, strength=1.0,
                dtype=torch.float64, seed=0, state=True, N=None):
    """Inputs of one call; ``R=None`` is the plain layout, an int the DeltaProduct layout.

    Keys are L2-normalised (as the layers do) or, with ``normalize=False``, small (|k| ~ 0.5).
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    steps = () if R is None else (R,)
    k = rand(B, T, *steps, H, K)
    k = F.normalize(k, dim=-1) if normalize else k * (0.5 / K ** 0.5)
    inputs = dict(q=rand(B, T, H, K), k=k, v=rand(B, T, *steps, H, V),
                  beta=torch.rand(B, T, *steps, H, generator=gen, dtype=torch.float64) * beta_max,
                  g=-torch.rand(B, T, H, generator=gen, dtype=torch.float64) * strength if gate else None)
    if state:
        inputs["initial_state"] = rand(N or B, H, K, V)
    return {n: (x.to(dtype) if isinstance(x, torch.Tensor) and n in ("q", "k", "v") else x)
            for n, x in inputs.items()}


@pytest.mark.parametrize("R", [None, 2, 3])
@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("beta_max", [1.0, 2.0])
@pytest.mark.parametrize("T, chunk_size", [(1, None), (7, 4), (64, 16), (64, None), (200, 48)])
def test_chunk_matches_naive_with_gradients(R, gate, beta_max, T, chunk_size):
    inputs = make_inputs(2, T, 3, 8, 5, R=R, gate=gate, beta_max=beta_max)
    assert_matches_naive(delta_scan, inputs, chunk_size=chunk_size)


@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("beta_max", [1.0, 2.0])
def test_chunk_matches_naive_small_keys_no_state_odd_sizes(R, gate, beta_max):
    inputs = make_inputs(1, 37, 2, 5, 3, R=R, gate=gate, beta_max=beta_max, normalize=False,
                         state=False, seed=1)
    assert_matches_naive(delta_scan, inputs, chunk_size=8, scale=0.7)


@pytest.mark.parametrize("R", [None, 2])
def test_segments_of_chunks_match_naive(R, monkeypatch):
    """Long inputs run as several segments of chunks carrying the state; force that at small T."""
    from linscan.ops.delta import chunk

    monkeypatch.setattr(chunk, "SEGMENT_ELEMENTS", 2 * 3 * 8 * 8 * 3)   # B H L max(L, K, V): 3 chunks
    inputs = make_inputs(2, 100, 3, 8, 5, R=R, gate=True, beta_max=2.0, seed=10)
    assert_matches_naive(delta_scan, inputs, chunk_size=8 // (R or 1))


def test_single_householder_axis_equals_plain_layout():
    inputs = make_inputs(2, 30, 2, 6, 4, R=1, gate=True, beta_max=2.0, seed=2)
    plain = inputs | {n: inputs[n][:, :, 0] for n in ("k", "v", "beta")}
    for backend in ("chunk", "naive"):
        o1, s1 = delta_scan(**inputs, output_final_state=True, backend=backend, chunk_size=8)
        o2, s2 = delta_scan(**plain, output_final_state=True, backend=backend, chunk_size=8)
        assert_close((o1, s1), (o2, s2), "R=1 layout")


@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("gate", [False, True])
def test_state_passing(R, gate):
    inputs = make_inputs(2, 150, 2, 8, 6, R=R, gate=gate, beta_max=2.0, seed=3)
    split = int(torch.randint(1, 149, (1,), generator=torch.Generator().manual_seed(4)))
    assert_state_passing(delta_scan, inputs, TIME_KEYS, split, chunk_size=16)


@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("gate", [False, True])
def test_decode_loop_equals_scan(backend, R, gate):
    inputs = make_inputs(2, 20, 2, 4, 3, R=R, gate=gate, beta_max=2.0, seed=5, state=False)
    zero = torch.zeros(2, 2, 4, 3, dtype=torch.float64)
    assert_decode_matches(delta_scan, inputs, TIME_KEYS, zero, backend=backend, chunk_size=8)


def test_decode_step_does_not_chunk(monkeypatch):
    from linscan.ops.delta import chunk

    forbid(monkeypatch, chunk, "_chunked")
    for R in (None, 2):
        inputs = make_inputs(2, 1, 2, 4, 3, R=R, gate=True)
        o, s = delta_scan(**inputs, output_final_state=True, backend="chunk")
        assert o.shape == (2, 1, 2, 3) and s.shape == (2, 2, 4, 3)


@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("with_state", [True, False])
def test_varlen_equals_loop(backend, R, with_state):
    cu = torch.tensor([0, 5, 6, 40, 77], dtype=torch.int32)
    inputs = make_inputs(1, 77, 2, 4, 3, R=R, gate=True, beta_max=2.0, seed=6, state=with_state, N=4)
    assert_varlen_matches_loop(delta_scan, inputs, TIME_KEYS, cu, backend=backend, chunk_size=16)


@pytest.mark.parametrize("strength", [1e-3, 5.0])
@pytest.mark.parametrize("beta_max", [1.0, 2.0])
def test_float32_long_sequence_precision(strength, beta_max, record_property):
    """float32 chunk vs float64 naive at T = 4096, normalised keys: relative error <= 1e-5."""
    ref_in = make_inputs(1, 4096, 2, 16, 16, gate=True, beta_max=beta_max, seed=7, state=False)
    ref_in["g"] = ref_in["g"] * 0 - strength
    errs = assert_float32_precision(delta_scan, ref_in, f"delta g~-{strength} beta<={beta_max}")
    record_property("rel_err", errs)


@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("spike", [float("-inf"), -1e8, -1e4, -30.0])
def test_extreme_log_decay(R, spike):
    """A full forget (g = -inf) or one very strong decay among ordinary ones: the chunk backend
    once returned NaN for the first and lost its float32 digits to the second (the cumulative
    log-decay absorbed the small decays after the spike, and differences of it cancelled).
    float64: values and gradients equal the naive loop's; float32: within twice its error."""
    inputs = make_inputs(2, 100, 2, 8, 5, R=R, gate=True, beta_max=2.0, strength=0.1, seed=12)
    inputs["g"][:, 37] = spike                                    # one token, mid-chunk
    inputs["g"][0, 64 // (R or 1), 1] = spike                     # the first token of a chunk
    assert_matches_naive(delta_scan, inputs, chunk_size=32 // (R or 1))
    assert_float32_precision(delta_scan, inputs, f"delta R={R} g={spike:g}", chunk_size=32 // (R or 1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["chunk", "naive"])
def test_low_precision_inputs(dtype, backend):
    inputs = make_inputs(1, 70, 2, 8, 8, R=2, gate=True, dtype=dtype, seed=8)
    inputs["initial_state"] = inputs["initial_state"].float()
    o, s = delta_scan(**inputs, output_final_state=True, backend=backend)
    assert o.dtype == dtype and s.dtype == torch.float32
    ref = make_inputs(1, 70, 2, 8, 8, R=2, gate=True, seed=8)
    ref |= {n: inputs[n].double() for n in ("q", "k", "v")}
    o_ref, _ = delta_scan(**ref, output_final_state=True, backend="naive")
    assert rel_err(o, o_ref) < 1e-2


@pytest.mark.parametrize("name", ["k", "beta", "g"])
def test_nan_propagates(name):
    inputs = make_inputs(1, 12, 1, 4, 4, gate=True, state=False)
    index = (0, 5, 0, 1) if name == "k" else (0, 5, 0)
    inputs[name][index] = float("nan")
    for backend in ("chunk", "naive"):
        o, _ = delta_scan(**inputs, backend=backend, chunk_size=4)
        assert torch.isnan(o[0, 5:]).all()
        assert torch.isfinite(o[0, :4]).all()                # the chunks before the NaN are untouched


@pytest.mark.parametrize("backend", ["chunk", "naive"])
def test_beta_two_is_a_reflection(backend):
    """beta = 2 with a unit key: I - 2 k k^T flips the state's component along k and keeps the rest."""
    B, H, K, V = 1, 2, 6, 5
    gen = torch.Generator().manual_seed(9)
    S0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    k = F.normalize(torch.randn(B, 1, H, K, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(B, 1, H, V, generator=gen, dtype=torch.float64)
    q = torch.randn(B, 1, H, K, generator=gen, dtype=torch.float64)
    beta = torch.full((B, 1, H), 2.0, dtype=torch.float64)
    o, S1 = delta_scan(q, k, v, beta, initial_state=S0, output_final_state=True, backend=backend, scale=1.0)
    kk = k[:, 0, :, :, None]                                  # (B, H, K, 1)
    householder = torch.eye(K, dtype=torch.float64) - 2 * kk @ kk.mT
    expected = householder @ S0 + 2 * kk @ v[:, 0, :, None, :]
    assert_close(S1, expected, "state")
    assert_close(o[:, 0], torch.einsum("bhk,bhkv->bhv", q[:, 0], expected), "o")
    # along k: the old component flips sign (then v is written twice); across k: unchanged
    along = lambda S: (kk.mT @ S)[..., 0, :]                  # noqa: E731
    assert_close(along(S1), -along(S0) + 2 * v[:, 0], "component along k")
    across = torch.eye(K, dtype=torch.float64) - kk @ kk.mT
    assert_close(across @ S1, across @ S0, "component across k")
    # two reflections in the same direction with nothing written restore the state (chunked path)
    zeros = torch.zeros(B, 2, H, V, dtype=torch.float64)
    _, S2 = delta_scan(q.repeat(1, 2, 1, 1), k.repeat(1, 2, 1, 1), zeros, beta.repeat(1, 2, 1),
                       initial_state=S0, output_final_state=True, backend=backend)
    assert_close(S2, S0, "two reflections")


def test_validation_errors():
    inputs = make_inputs(1, 6, 2, 4, 3, R=2, gate=True)
    with pytest.raises(ValueError, match="beta"):
        delta_scan(**inputs | {"beta": inputs["beta"] * 0 + 2.5})
    with pytest.raises(ValueError, match="beta"):
        delta_scan(**inputs | {"beta": inputs["beta"][:, :, 0]})
    with pytest.raises(TypeError, match="beta"):
        delta_scan(**inputs | {"beta": None})
    with pytest.raises(ValueError, match="g"):
        delta_scan(**inputs | {"g": -inputs["g"] + 0.1})
    with pytest.raises(ValueError, match="v"):
        delta_scan(**inputs | {"v": inputs["v"][:, :, 0]})
    with pytest.raises(ValueError, match="initial_state"):
        delta_scan(**inputs | {"initial_state": inputs["initial_state"][:, :, :3]})
