"""Every mixer: decode == chunked forward, split forward == one forward, varlen == per sequence, gradients."""

from __future__ import annotations

import pytest
import torch

from linscan.nn.mixers import MIXERS

D_MODEL, N_HEADS = 32, 2
CASES = [
    ("linear_attention", {}),
    ("linear_attention", {"normalize": False, "feature_map": "relu"}),
    ("linear_attention", {"use_short_conv": True, "conv_size": 3}),
    ("lightning", {}),
    ("retnet", {}),
    ("gla", {}),
    ("gla", {"use_short_conv": True}),
    ("hgrn2", {}),
    ("hgrn2", {"lower_bound": 0.5}),
    ("mlstm", {}),
    ("mlstm", {"input_gate": "sigmoid"}),
    ("deltanet", {}),
    ("deltanet", {"allow_neg_eigval": True, "use_short_conv": False}),
    ("gated_deltanet", {}),
    ("deltaproduct", {"n_householder": 3, "gated": True, "allow_neg_eigval": True}),
    ("attention", {}),
    ("attention", {"window": 5}),
    ("attention", {"n_kv_heads": 1, "window": 4}),
    ("liger", {"window": 5}),
    ("liger", {"recurrence": "gated_deltanet", "n_kv_heads": 1}),
    ("liger", {"recurrence": "hgrn2", "window": None}),
    ("mom", {}),
    ("mom", {"recurrence": "gla", "top_k": 1}),
    ("mom", {"use_short_conv": False, "shared_memory": False}),
    ("pararnn_gru", {}),
    ("pararnn_lstm", {"hidden_size": 8}),
    ("alrnn", {"state_size": 6, "relu_units": 3}),
    ("tcnca", {"chunk_size": 4, "tcn_layers": 2}),
    ("tcnca", {"chunk_size": 3, "tcn_to_output": False}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in CASES]
TOL = dict(rtol=1e-9, atol=1e-9)


def make(name: str, opts: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MIXERS[name](D_MODEL, N_HEADS, **opts).double()


def inputs(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_states(actual: dict, expected: dict, what: str) -> None:
    """Compare states key by key; a longer (padded) KV cache is compared on the expected slots."""
    assert actual.keys() == expected.keys(), what
    for key, e in expected.items():
        a = actual[key][tuple(slice(0, s) for s in e.shape)]
        torch.testing.assert_close(a, e, msg=lambda m: f"{what} state[{key!r}]: {m}", **TOL)


def cat_states(states: list[dict]) -> dict:
    return {key: torch.cat([s[key] for s in states]) for key in states[0]}


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_decode_equals_forward(name, opts):
    mixer, x = make(name, opts), inputs(2, 11)
    y, state = mixer(x)
    steps, s = [], None
    for t in range(x.shape[1]):
        y_t, s = mixer(x[:, t : t + 1], s)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, dim=1), y, **TOL)
    assert_states(s, state, "decode")


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_split_equals_forward(name, opts):
    mixer, x = make(name, opts), inputs(2, 23)
    y, state = mixer(x)
    y1, s1 = mixer(x[:, :9])
    y2, s2 = mixer(x[:, 9:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, **TOL)
    assert_states(s2, state, "split")


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "carried-state"])
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_varlen_equals_per_sequence(name, opts, with_state):
    mixer, lengths = make(name, opts), [5, 9, 1, 7]
    x = inputs(1, sum(lengths), seed=2)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    init = mixer(inputs(len(lengths), 6, seed=3))[1] if with_state else None
    y, state = mixer(x, init, cu_seqlens=cu)
    ys, states = [], []
    for n in range(len(lengths)):
        row = None if init is None else {key: s[n : n + 1] for key, s in init.items()}
        y_n, s_n = mixer(x[:, cu[n] : cu[n + 1]], row)
        ys.append(y_n)
        states.append(s_n)
    torch.testing.assert_close(y, torch.cat(ys, dim=1), **TOL)
    for n, s_n in enumerate(states):
        assert_states({key: s[n : n + 1] for key, s in state.items()}, s_n, f"sequence {n}")


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_gradients_reach_every_parameter(name, opts):
    torch.manual_seed(0)
    mixer, x = MIXERS[name](D_MODEL, N_HEADS, **opts), inputs(2, 13).float().requires_grad_(True)
    y, state = mixer(x)
    y2, _ = mixer(torch.randn_like(x), state)  # backprop through a carried state too
    (y.square().mean() + y2.square().mean()).backward()
    missing = [n for n, p in mixer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_float32_matches_float64(name, opts):
    x = inputs(2, 17)
    y64 = make(name, opts)(x)[0]
    y32 = make(name, opts).float()(x.float())[0]
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)
