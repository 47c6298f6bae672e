"""mlstm_scan: chunk vs the float64 naive reference, states, decode, varlen, extreme gates,
precision, dtypes, an independent closed form, and a cross-check against mlstm_kernels."""

import pytest
import torch
import torch.nn.functional as F

from linscan.ops import mlstm_scan

from .harness import (forbid, assert_close, assert_decode_matches, assert_matches_naive, assert_state_passing,
                      assert_float32_precision, assert_varlen_matches_loop, forward_backward, rel_err)

TIME_KEYS = ("q", "k", "v", "i", "f")
GATES = ["exp", "sigmoid"]


def make_inputs(B, T, H, K, V, *, dtype=torch.float64, seed=0, state=True, N=None,
                i_range=(-3.0, 3.0), f_range=(0.0, 5.0)):
    """Random q, k, v (``dtype``), gates uniform in ``i_range`` / ``f_range`` (float64), state (C, n, m)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    inputs = dict(q=rand(B, T, H, K).to(dtype), k=rand(B, T, H, K).to(dtype), v=rand(B, T, H, V).to(dtype),
                  i=uniform(*i_range, B, T, H), f=uniform(*f_range, B, T, H))
    if state:
        N = N or B
        inputs["initial_state"] = (rand(N, H, K, V), rand(N, H, K), uniform(-2.0, 2.0, N, H))
    return inputs


def zero_state(N, H, K, V):
    return (torch.zeros(N, H, K, V, dtype=torch.float64), torch.zeros(N, H, K, dtype=torch.float64),
            torch.zeros(N, H, dtype=torch.float64))


def _float(x):
    """A tensor or a state tuple in float32."""
    return x.float() if isinstance(x, torch.Tensor) else tuple(t.float() for t in x)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("T, chunk_size", [(1, None), (7, 4), (64, 16), (64, None), (200, 64), (200, 48)])
def test_chunk_matches_naive_with_gradients(gate, normalize, with_state, T, chunk_size):
    inputs = make_inputs(2, T, 3, 8, 5, state=with_state, seed=T)
    assert_matches_naive(mlstm_scan, inputs, input_gate=gate, normalize=normalize, chunk_size=chunk_size)


@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("normalize", [True, False])
def test_state_passing(backend, gate, normalize):
    inputs = make_inputs(2, 150, 2, 8, 6, seed=2)
    split = int(torch.randint(1, 149, (1,), generator=torch.Generator().manual_seed(3)))
    assert_state_passing(mlstm_scan, inputs, TIME_KEYS, split, backend=backend, input_gate=gate,
                         normalize=normalize, chunk_size=32)


@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("gate", GATES)
def test_decode_loop_equals_scan(backend, gate):
    inputs = make_inputs(2, 20, 2, 4, 3, seed=4, state=False)
    assert_decode_matches(mlstm_scan, inputs, TIME_KEYS, zero_state(2, 2, 4, 3), backend=backend,
                          input_gate=gate, chunk_size=8)


@pytest.mark.parametrize("gate", GATES)
def test_decode_step_does_not_chunk(monkeypatch, gate):
    from linscan.ops.mlstm import chunk

    forbid(monkeypatch, chunk, "_chunked")
    inputs = make_inputs(2, 1, 2, 4, 3)
    o, (C, n, m) = mlstm_scan(**inputs, input_gate=gate, output_final_state=True, backend="chunk")
    assert o.shape == (2, 1, 2, 3) and C.shape == (2, 2, 4, 3) and n.shape == (2, 2, 4) and m.shape == (2, 2)


@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("with_state", [True, False])
def test_varlen_equals_loop(backend, gate, with_state):
    # the length-1 sequence leaves whole chunks of padding in the chunk backend
    cu = torch.tensor([0, 5, 6, 40, 77], dtype=torch.int32)
    inputs = make_inputs(1, 77, 2, 4, 3, seed=5, state=with_state, N=4)
    assert_varlen_matches_loop(mlstm_scan, inputs, TIME_KEYS, cu, backend=backend, input_gate=gate,
                               chunk_size=16)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("normalize", [True, False])
def test_extreme_gates_match_naive(gate, normalize):
    """Input gates up to +30, forget gates down to -30 (exp(i) ~ 1e13, forget ~ 1e-13)."""
    inputs = make_inputs(1, 100, 2, 8, 4, seed=8, i_range=(-30.0, 30.0), f_range=(-30.0, 30.0))
    inputs["i"][0, 10:20] = 30.0
    inputs["f"][0, 40:60] = -30.0
    assert_matches_naive(mlstm_scan, inputs, input_gate=gate, normalize=normalize, chunk_size=16)
    # float32: finite values and gradients, and (as in flash-attention's tests) an error against
    # the float64 reference within twice that of the float32 reference loop
    f32 = {n: _float(x) for n, x in inputs.items()}
    o, s, grads = forward_backward(mlstm_scan, f32, "chunk", input_gate=gate, normalize=normalize, chunk_size=16)
    assert all(torch.isfinite(t).all() for t in [o, *s, *grads.values()])
    options = dict(input_gate=gate, normalize=normalize, output_final_state=True)
    o64, s64 = mlstm_scan(**inputs, backend="naive", **options)
    o32, s32 = mlstm_scan(**f32, backend="naive", **options)
    for what, fast, slow, ref in zip(["o", "C", "n", "m"], [o, *s], [o32, *s32], [o64, *s64]):
        assert rel_err(fast, ref) <= 2 * rel_err(slow, ref) + 1e-7, what



@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("with_state", [True, False])
def test_exp_gate_closed_form(backend, with_state):
    """Both readouts against the unstabilised quadratic form (no max-state anywhere).

    Weights w_ts = e^{F_t - F_s + i_s} (F = cumulative logsigmoid(f)) and e^{F_t + m_0} for the
    initial memory; m_t is their log-maximum. normalize=False gives the true readout
    sum_s w_ts (q^_t . k_s) v_s; normalize=True divides by max(|q^_t . n~_t|, 1) + eps e^{m_t}.
    """
    B, T, H, K, V, eps = 1, 40, 2, 6, 4, 1e-2
    x = make_inputs(B, T, H, K, V, seed=9, state=with_state, i_range=(-4.0, 4.0), f_range=(-1.0, 4.0))
    C0, n0, m0 = x.get("initial_state") or zero_state(B, H, K, V)
    q = x["q"] * K ** -0.5
    Fc = F.logsigmoid(x["f"]).cumsum(1)                                     # (B, T, H)
    logw = Fc[:, :, None] - Fc[:, None, :] + x["i"][:, None]                # (B, t, s, H)
    logw = logw.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None], float("-inf"))
    log0 = Fc + m0[:, None]                                                 # (B, T, H)
    qk = torch.einsum("bthk,bshk->btsh", q, x["k"])
    num = torch.einsum("btsh,bshv->bthv", qk * logw.exp(), x["v"])
    num = num + log0.exp()[..., None] * torch.einsum("bthk,bhkv->bthv", q, C0)
    qn = (qk * logw.exp()).sum(2) + log0.exp() * torch.einsum("bthk,bhk->bth", q, n0)
    m = torch.maximum(logw.amax(2), log0)
    o_true, _ = mlstm_scan(**x, normalize=False, backend=backend, chunk_size=16)
    o_norm, (_, _, m_last) = mlstm_scan(**x, eps=eps, backend=backend, chunk_size=16, output_final_state=True)
    assert_close(o_true, num, "unnormalised")
    assert_close(o_norm, num / (torch.maximum(qn.abs(), torch.ones(())) + eps * m.exp())[..., None], "normalised")
    assert_close(m_last, m[:, -1], "m_T")


def test_sigmoid_gate_folds_initial_m():
    """Under the sigmoid gate a state (C, n, m) means the memory (C e^m, n e^m); the returned m is 0."""
    x = make_inputs(2, 30, 2, 4, 3, seed=10)
    C0, n0, m0 = x["initial_state"]
    folded = (C0 * m0.exp()[..., None, None], n0 * m0.exp()[..., None], torch.zeros_like(m0))
    for backend in ("chunk", "naive"):
        o, s = mlstm_scan(**x, input_gate="sigmoid", output_final_state=True, backend=backend, chunk_size=8)
        o2, s2 = mlstm_scan(**(x | {"initial_state": folded}), input_gate="sigmoid", output_final_state=True,
                            backend=backend, chunk_size=8)
        assert_close(o, o2, "o")
        assert_close(s, s2, "state")
        assert (s[2] == 0).all()


@pytest.mark.parametrize("gate", GATES)
def test_float32_long_sequence_precision(gate, record_property):
    """float32 chunk vs float64 naive at T = 4096: relative error <= 1e-5, and within twice the
    error of the float32 naive loop (the division by q . n makes some gates ill-conditioned)."""
    B, T, H, K, V = 1, 4096, 2, 16, 16
    ref_in = make_inputs(B, T, H, K, V, seed=6, state=False)
    errs = assert_float32_precision(mlstm_scan, ref_in, f"mlstm {gate}", input_gate=gate)
    record_property("rel_err", errs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("gate", GATES)
def test_low_precision_inputs(dtype, backend, gate):
    inputs = make_inputs(1, 70, 2, 8, 8, dtype=dtype, seed=7)
    inputs |= {"i": inputs["i"].to(dtype), "f": inputs["f"].to(dtype)}
    inputs["initial_state"] = tuple(t.float() for t in inputs["initial_state"])
    o, s = mlstm_scan(**inputs, input_gate=gate, output_final_state=True, backend=backend)
    assert o.dtype == dtype and all(t.dtype == torch.float32 for t in s)
    ref = make_inputs(1, 70, 2, 8, 8, seed=7)
    ref |= {n: inputs[n].double() for n in TIME_KEYS}
    o_ref, _ = mlstm_scan(**ref, input_gate=gate, output_final_state=True, backend="naive")
    assert rel_err(o, o_ref) < 1e-2


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("where", ["i", "f"])
def test_nan_propagates(gate, backend, where):
    """NaN at token 5 reaches every later output and no earlier one (also inside its chunk)."""
    inputs = make_inputs(1, 12, 1, 4, 4, state=False)
    inputs[where][0, 5, 0] = float("nan")
    o, _ = mlstm_scan(**inputs, input_gate=gate, backend=backend, chunk_size=8)
    assert torch.isnan(o[0, 5:]).all() and torch.isfinite(o[0, :5]).all()


def test_bad_arguments():
    x = make_inputs(1, 5, 2, 4, 3)
    with pytest.raises(ValueError, match="input_gate"):
        mlstm_scan(**x, input_gate="relu")
    with pytest.raises(TypeError, match="initial_state"):
        mlstm_scan(**(x | {"initial_state": list(x["initial_state"])}))
    with pytest.raises(ValueError, match="initial_state"):
        mlstm_scan(**(x | {"initial_state": x["initial_state"][:2]}))
    C, n, m = x["initial_state"]
    with pytest.raises(ValueError, match=r"initial_state\[1\] \(n\)"):
        mlstm_scan(**(x | {"initial_state": (C, n[..., :3], m)}))
    with pytest.raises(ValueError, match=r"initial_state\[2\] \(m\)"):
        mlstm_scan(**(x | {"initial_state": (C, n, m[..., None])}))
    with pytest.raises(ValueError, match="f: expected shape"):
        mlstm_scan(**(x | {"f": x["f"][..., None]}))
    with pytest.raises(ValueError, match="eps"):
        mlstm_scan(**x, eps=-1.0)


def test_matches_mlstm_kernels():
    """Independent semantics check (m_0 = 0, eps, normaliser) against mlstm_kernels' torch references:
    float32 outputs and states against its chunkwise and recurrent kernels, then float64 outputs,
    states and gradients against its chunkwise one (float32 gradients differ by float32 noise only)."""
    native = pytest.importorskip("mlstm_kernels.torch.chunkwise.native")
    recurrent = pytest.importorskip("mlstm_kernels.torch.recurrent.native_sequence")
    B, T, H, K, V = 2, 128, 2, 16, 8
    x64 = make_inputs(B, T, H, K, V, seed=11, i_range=(-5.0, 5.0))

    def theirs(fn, x, state):
        heads_first = [x[n].transpose(1, 2) for n in TIME_KEYS]
        C0, n0, m0 = (None, None, None) if state is None else (state[0], state[1], state[2][..., None])
        h, (C, n, m) = fn(*heads_first, c_initial=C0, n_initial=n0, m_initial=m0, return_last_states=True)
        return h.transpose(1, 2), (C, n, m.reshape(B, H))

    x = {n: _float(t) for n, t in x64.items()}
    for state in (None, x["initial_state"]):
        ours = mlstm_scan(**(x | {"initial_state": state}), output_final_state=True, backend="chunk")
        for fn in (native.mlstm_chunkwise__native_autograd, recurrent.mlstm_recurrent_sequence__native_fw):
            h, s = theirs(fn, x, state)
            assert_close(ours[0], h, f"o vs {fn.__name__}", rtol=1e-4, atol=1e-4)
            assert_close(ours[1], s, f"state vs {fn.__name__}", rtol=1e-4, atol=1e-4)

    mine = forward_backward(mlstm_scan, x64, "chunk")
    leaves = {n: (t.detach().clone().requires_grad_(True) if isinstance(t, torch.Tensor)
                  else tuple(s.detach().clone().requires_grad_(True) for s in t)) for n, t in x64.items()}
    h, s = theirs(native.mlstm_chunkwise__native_autograd, leaves, leaves["initial_state"])
    gen = torch.Generator().manual_seed(0)       # the projection forward_backward uses
    sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in [h, *s]).backward()
    assert_close(mine[0], h.detach(), "o (float64)")
    assert_close(mine[1], tuple(t.detach() for t in s), "state (float64)")
    for n in TIME_KEYS:
        assert_close(mine[2][f"{n}[0]"], leaves[n].grad, f"grad {n} (float64)")
    for j in range(3):
        assert_close(mine[2][f"initial_state[{j}]"], leaves["initial_state"][j].grad, f"grad initial_state[{j}]")


@pytest.mark.parametrize("gate", GATES)
def test_segments_of_chunks_match_naive(gate, monkeypatch):
    """Long inputs run as segments of whole chunks carrying (C, n, m); force several at small T."""
    from linscan.ops.mlstm import chunk

    monkeypatch.setattr(chunk, "SEGMENT_TOKENS", 40)                  # 40 // 16 * 16 = 32 tokens
    inputs = make_inputs(2, 100, 2, 8, 5, seed=12)
    assert_matches_naive(mlstm_scan, inputs, input_gate=gate, chunk_size=16)
