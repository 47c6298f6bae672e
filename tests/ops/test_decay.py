"""decay_scan: chunk vs the float64 naive reference, states, decode, varlen, precision, dtypes."""

import pytest
import torch

from linscan.ops import decay_scan

from .harness import (forbid, assert_decode_matches, assert_matches_naive, assert_state_passing,
                      assert_float32_precision, assert_varlen_matches_loop, rel_err)

TIME_KEYS = ("q", "k", "v", "g")
G_FORMS = ["none", "head", "scalar", "diagonal"]


def make_inputs(B, T, H, K, V, form, *, dtype=torch.float64, strength=1.0, seed=0, state=True, N=None):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    g = {
        "none": None,
        "head": -torch.rand(H, generator=gen, dtype=torch.float64) * strength,
        "scalar": -torch.rand(B, T, H, generator=gen, dtype=torch.float64) * strength,
        "diagonal": -torch.rand(B, T, H, K, generator=gen, dtype=torch.float64) * strength,
    }[form]
    inputs = dict(q=rand(B, T, H, K), k=rand(B, T, H, K), v=rand(B, T, H, V), g=g)
    if state:
        inputs["initial_state"] = rand(N or B, H, K, V)
    return {n: (x.to(dtype) if isinstance(x, torch.Tensor) and n not in ("g", "initial_state") else x)
            for n, x in inputs.items()}


@pytest.mark.parametrize("form", G_FORMS)
@pytest.mark.parametrize("T, chunk_size", [(1, None), (7, 4), (64, 16), (64, None), (200, 64), (200, 48)])
def test_chunk_matches_naive_with_gradients(form, T, chunk_size):
    inputs = make_inputs(2, T, 3, 8, 5, form)
    assert_matches_naive(decay_scan, inputs, chunk_size=chunk_size)


@pytest.mark.parametrize("form", G_FORMS)
def test_chunk_matches_naive_without_initial_state_odd_sizes(form):
    inputs = make_inputs(1, 37, 2, 5, 3, form, state=False, seed=1)
    assert_matches_naive(decay_scan, inputs, chunk_size=16, scale=0.7)


@pytest.mark.parametrize("form", G_FORMS)
def test_segments_of_chunks_match_naive(form, monkeypatch):
    """Long inputs run as segments of whole chunks carrying the state; force several at small T."""
    from linscan.ops.decay import chunk

    monkeypatch.setattr(chunk, "SEGMENT_TOKENS", 40)                  # 40 // 16 * 16 = 32 tokens
    inputs = make_inputs(2, 100, 2, 8, 5, form, seed=11)
    assert_matches_naive(decay_scan, inputs, chunk_size=16)


@pytest.mark.parametrize("form", G_FORMS)
def test_state_passing(form):
    inputs = make_inputs(2, 150, 2, 8, 6, form, seed=2)
    split = int(torch.randint(1, 149, (1,), generator=torch.Generator().manual_seed(3)))
    assert_state_passing(decay_scan, inputs, TIME_KEYS, split, chunk_size=32)


@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("form", G_FORMS)
def test_decode_loop_equals_scan(form, backend):
    inputs = make_inputs(2, 20, 2, 4, 3, form, seed=4, state=False)
    zero = torch.zeros(2, 2, 4, 3, dtype=torch.float64)
    assert_decode_matches(decay_scan, inputs, TIME_KEYS, zero, backend=backend, chunk_size=8)


def test_decode_step_does_not_chunk(monkeypatch):
    from linscan.ops.decay import chunk

    forbid(monkeypatch, chunk, "_chunked")
    inputs = make_inputs(2, 1, 2, 4, 3, "scalar")
    o, s = decay_scan(**inputs, output_final_state=True, backend="chunk")
    assert o.shape == (2, 1, 2, 3) and s.shape == (2, 2, 4, 3)


@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("form", G_FORMS)
@pytest.mark.parametrize("with_state", [True, False])
def test_varlen_equals_loop(form, backend, with_state):
    cu = torch.tensor([0, 5, 6, 40, 77], dtype=torch.int32)
    inputs = make_inputs(1, 77, 2, 4, 3, form, seed=5, state=with_state, N=4)
    assert_varlen_matches_loop(decay_scan, inputs, TIME_KEYS, cu, backend=backend, chunk_size=16)


@pytest.mark.parametrize("form", ["scalar", "diagonal"])
@pytest.mark.parametrize("strength", [1e-3, 5.0])
def test_float32_long_sequence_precision(form, strength, record_property):
    """float32 chunk vs float64 naive at T = 4096: relative error <= 1e-5, weak and strong decay."""
    B, T, H, K, V = 1, 4096, 2, 16, 16
    ref_in = make_inputs(B, T, H, K, V, form, strength=2 * strength, seed=6, state=False)
    ref_in["g"] = ref_in["g"] * 0 - strength if form == "scalar" else ref_in["g"] - strength * 0.5
    errs = assert_float32_precision(decay_scan, ref_in, f"decay {form} g~-{strength}")
    record_property("rel_err", errs)


@pytest.mark.parametrize("form", ["head", "scalar", "diagonal"])
@pytest.mark.parametrize("spike", [float("-inf"), -1e8, -1e4, -30.0])
def test_extreme_log_decay(form, spike):
    """A full forget (g = -inf) or one very strong decay among ordinary ones: the chunk backend
    once returned NaN for the first and lost its float32 digits to the second (the cumulative
    log-decay absorbed the small decays after the spike, and differences of it cancelled).
    float64: values and gradients equal the naive loop's; float32: within twice its error."""
    inputs = make_inputs(2, 150, 2, 8, 5, form, strength=0.1, seed=12)
    if form == "head":
        inputs["g"][0] = spike                                    # every token of head 0
    else:
        inputs["g"][:, 37] = spike                                # one token, mid-chunk
        inputs["g"][0, 64, 1, ...] = spike                        # the first token of a chunk
    assert_matches_naive(decay_scan, inputs, chunk_size=32)
    assert_float32_precision(decay_scan, inputs, f"decay {form} g={spike:g}", chunk_size=32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["chunk", "naive"])
def test_low_precision_inputs(dtype, backend):
    inputs = make_inputs(1, 70, 2, 8, 8, "scalar", dtype=dtype, seed=7)
    inputs["initial_state"] = inputs["initial_state"].float()
    o, s = decay_scan(**inputs, output_final_state=True, backend=backend)
    assert o.dtype == dtype and s.dtype == torch.float32
    ref = make_inputs(1, 70, 2, 8, 8, "scalar", seed=7)
    ref |= {n: inputs[n].double() for n in ("q", "k", "v")}
    o_ref, _ = decay_scan(**ref, output_final_state=True, backend="naive")
    assert rel_err(o, o_ref) < 1e-2


def test_nan_propagates():
    inputs = make_inputs(1, 10, 1, 4, 4, "scalar", state=False)
    inputs["g"][0, 3, 0] = float("nan")
    o, _ = decay_scan(**inputs, backend="chunk")
    assert torch.isnan(o[0, 3:]).all() and torch.isfinite(o[0, :3]).all()
