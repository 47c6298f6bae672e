"""TCNCA: chunked attention == a block-diagonal causal mask, the TCN's causality and receptive field,
decode == forward, split == one forward, packed == per sequence, gradients, errors, the bench."""

from __future__ import annotations

import json

import pytest
import torch

from linscan.nn.mixers import MIXERS, TCNCA
from linscan.nn.mixers.tcnca import CausalTCN, chunked_causal_attention, receptive_field

D_MODEL, N_HEADS = 16, 2
TOL = dict(rtol=1e-9, atol=1e-9)
# chunk 5 with T = 23: four borders, a partial last chunk; the 3-layer TCN (receptive field 15) spans chunks
CASES = [{"chunk_size": 5, "tcn_layers": 3},
         {"chunk_size": 4, "tcn_kernel": 4, "tcn_layers": 2, "rotary": False, "tcn_to_output": False},
         {"chunk_size": 1, "tcn_layers": 1}, {}]
IDS = ["C5-D3", "C4-K4-D2-norope-attnout", "C1", "defaults"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(seed: int = 0, **opts) -> TCNCA:
    torch.manual_seed(seed)
    return MIXERS["tcnca"](D_MODEL, N_HEADS, **opts).double()


def inputs(*shape: int, seed: int = 1, dim: int = D_MODEL) -> torch.Tensor:
    return torch.randn(*shape, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_states(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for key, e in expected.items():
        assert actual[key].shape == e.shape, f"{what} state[{key!r}]: {actual[key].shape} != {e.shape}"
        torch.testing.assert_close(actual[key], e, msg=lambda m: f"{what} state[{key!r}]: {m}", **TOL)


def reference_attention(q, k, v, chunk_size):
    """Full softmax attention under the block-diagonal causal mask, by hand (no SDPA)."""
    S = q.shape[1]
    t = torch.arange(S)
    mask = (t[None, :] <= t[:, None]) & (t[None, :] // chunk_size == t[:, None] // chunk_size)  # (query, key)
    scores = torch.einsum("bshd,bthd->bhst", q, k) / q.shape[-1] ** 0.5
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("bhst,bthd->bshd", weights, v)


@pytest.mark.parametrize("S,C", [(1, 4), (12, 4), (13, 4), (7, 16), (9, 1)])
def test_chunked_attention_equals_masked_reference(S, C):
    q, k, v = (inputs(2, S, 3, seed=s, dim=6) for s in range(3))  # (B, S, H, D)
    torch.testing.assert_close(chunked_causal_attention(q, k, v, C), reference_attention(q, k, v, C), **TOL)


@pytest.mark.parametrize("K,D", [(2, 1), (3, 2), (3, 3), (4, 2)])
def test_tcn_is_causal_with_the_stated_receptive_field(K, D):
    """d y_t / d x_s is nonzero exactly for t - s in [0, 1 + (K-1)(2^D - 1)), channel by channel."""
    torch.manual_seed(0)
    tcn, T = CausalTCN(2, K, D).double(), 40
    rf = receptive_field(K, D)
    assert tcn.receptive_field == rf == 1 + (K - 1) * (2**D - 1)
    x = inputs(1, T, dim=2)
    jac = torch.autograd.functional.jacobian(lambda x: tcn(x)[0], x)[0, :, :, 0, :, :]  # (T, c, T, c)
    lag = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # (t, s)
    for c in range(2):
        assert torch.equal(jac[:, c, :, c] != 0, (lag >= 0) & (lag < rf)), f"channel {c}"
        assert not jac[:, c, :, 1 - c].any()  # depthwise


@pytest.mark.parametrize("tcn_to_output", [True, False])
@pytest.mark.parametrize("zero_tcn", [False, True], ids=["tcn", "no-tcn"])
def test_output_depends_on_its_chunk_and_the_tcn_reach(zero_tcn, tcn_to_output):
    """Output t reads inputs [C floor(t/C) - (rf - 1), t]; without the TCN only its own chunk."""
    mixer, T, C = make(chunk_size=6, tcn_layers=2, tcn_to_output=tcn_to_output), 30, 6  # receptive field 7
    rf = 1 if zero_tcn else mixer.tcn.receptive_field
    if zero_tcn:
        with torch.no_grad():
            for conv in mixer.tcn.convs:
                conv.weight.zero_()
    jac = torch.autograd.functional.jacobian(lambda x: mixer(x)[0], inputs(1, T))[0, :, :, 0]  # (t, d, s, d)
    reads = jac.abs().sum(dim=(1, 3)) > 0  # (t, s)
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    assert torch.equal(reads, (s <= t) & (s >= (t // C) * C - (rf - 1)))


@pytest.mark.parametrize("opts", CASES, ids=IDS)
def test_decode_equals_forward(opts):
    mixer, x = make(**opts), inputs(2, 23)
    y, state = mixer(x)
    steps, s = [], None
    for t in range(x.shape[1]):
        y_t, s = mixer(x[:, t : t + 1], s)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, dim=1), y, **TOL)
    assert_states(s, state, "decode")
    C = mixer.chunk_size
    assert state["k"].shape == (2, C - 1, N_HEADS, D_MODEL // N_HEADS) and state["fill"].tolist() == [23 % C] * 2


@pytest.mark.parametrize("cuts", [[9], [1, 2, 3], [4, 5, 10, 11, 20], [0, 22]], ids=str)
@pytest.mark.parametrize("opts", CASES[:2], ids=IDS[:2])
def test_split_equals_forward(opts, cuts):
    mixer, x = make(**opts), inputs(2, 23)
    y, state = mixer(x)
    ys, s = [], None
    for a, b in zip([0, *cuts], [*cuts, 23]):
        if b > a:
            y_part, s = mixer(x[:, a:b], s)
            ys.append(y_part)
    torch.testing.assert_close(torch.cat(ys, dim=1), y, **TOL)
    assert_states(s, state, f"cuts {cuts}")


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "carried-state"])
@pytest.mark.parametrize("opts", CASES[:2], ids=IDS[:2])
def test_varlen_equals_per_sequence(opts, with_state):
    mixer, lengths = make(**opts), [5, 9, 1, 7, 12]
    x = inputs(1, sum(lengths), seed=2)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    # rows whose chunks stand at different fills (carried state of 3, 7 tokens, ...)
    init = None
    if with_state:
        init = [mixer(inputs(1, n, seed=3 + n))[1] for n in (3, 7, 4, 1, 10)]
        init = {key: torch.cat([s[key] for s in init]) for key in init[0]}
    y, state = mixer(x, init, cu_seqlens=cu)
    for n in range(len(lengths)):
        row = None if init is None else {key: s[n : n + 1] for key, s in init.items()}
        y_n, s_n = mixer(x[:, cu[n] : cu[n + 1]], row)
        torch.testing.assert_close(y[:, cu[n] : cu[n + 1]], y_n, **TOL, msg=lambda m: f"sequence {n}: {m}")
        assert_states({key: s[n : n + 1] for key, s in state.items()}, s_n, f"sequence {n}")


def test_gradients_finite_and_reach_every_parameter():
    torch.manual_seed(0)
    mixer = MIXERS["tcnca"](D_MODEL, N_HEADS, chunk_size=4, tcn_layers=2)
    x = inputs(2, 13).float().requires_grad_(True)
    y, state = mixer(x)
    y2, _ = mixer(torch.randn_like(x), state)  # backprop through a carried state too
    (y.square().mean() + y2.square().mean()).backward()
    missing = [n for n, p in mixer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters())
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_float32_matches_float64():
    x = inputs(2, 17)
    y64 = make(chunk_size=5, tcn_layers=3)(x)[0]
    y32 = make(chunk_size=5, tcn_layers=3).float()(x.float())[0]
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opts,match", [
    ({"chunk_size": 0}, r"chunk_size: expected an int >= 1, got 0"),
    ({"chunk_size": 8.0}, r"chunk_size: expected an int >= 1, got 8.0"),
    ({"tcn_kernel": 1}, r"tcn_kernel: expected an int >= 2, got 1"),
    ({"tcn_layers": 0}, r"tcn_layers: expected an int >= 1, got 0"),
    ({"rotary": 1}, r"rotary: expected a bool, got 1"),
    ({"tcn_to_output": None}, r"tcn_to_output: expected a bool, got None"),
    ({"head_dim": 3}, r"head_dim: expected an even head dim with rotary=True, got 3"),
])
def test_bad_options_are_named(opts, match):
    with pytest.raises(ValueError, match=match):
        MIXERS["tcnca"](D_MODEL, N_HEADS, **opts)


def test_bad_calls_are_named():
    mixer, x = make(chunk_size=4, tcn_layers=2), inputs(2, 6)
    state = mixer(x)[1]
    with pytest.raises(ValueError, match=r"state: expected a TCNCA state with keys .*'tcn_1'.*, got \['S'\]"):
        mixer(x, {"S": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"state: expected 3 rows \(sequences\) and 3 key slots, got fill \(2,\)"):
        mixer(inputs(3, 2), state)
    with pytest.raises(ValueError, match=r"x: expected batch size 1 with cu_seqlens"):
        mixer(x, cu_seqlens=torch.tensor([0, 3, 6]))
    mixer.sequence_group = object()
    with pytest.raises(NotImplementedError, match="sequence parallelism"):
        mixer(x)


def test_registered_as_letter_and_eval_name():
    from linscan.eval import parse_mixer
    from linscan.models import LETTERS

    assert LETTERS["T"] == "tcnca" and parse_mixer("tcnca").pattern == "T"
    assert parse_mixer("tcnca+attention 3:1").pattern == "TTTA"


def test_bench_smoke(tmp_path, capsys):
    from linscan.bench import tcnca as bench

    out = tmp_path / "run"
    assert bench.main(["--out", str(out), "--lengths", "32,64", "--d-model", "16", "--heads", "2",
                       "--chunk-size", "8", "--repeats", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(r["mixer"], r["T"]) for r in results["rows"]] == [
        ("tcnca", 32), ("attention", 32), ("tcnca", 64), ("attention", 64)]
    assert all(r["time_s"] > 0 for r in results["rows"])
    assert (out / "tcnca.png").read_bytes()[:4] == b"\x89PNG"
    assert "fwd+bwd" in capsys.readouterr().out
