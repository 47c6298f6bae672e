"""Mixture of Memories: routed layer == masking oracle (MATH.md 6), state passing, decode, varlen, aux loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from linscan.nn.mixers.mom import MoM, balance_loss
from linscan.ops import decay_scan, delta_scan

D_MODEL, N_HEADS = 16, 2
TOL = dict(rtol=1e-9, atol=1e-9)
RECURRENCES = ["gated_deltanet", "gla"]


def make(seed: int = 0, **opts) -> MoM:
    torch.manual_seed(seed)
    return MoM(D_MODEL, N_HEADS, **opts).double()


def inputs(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def routed_conv(conv, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The short conv over each sequence's routed subsequence; x ``[B, T, D]``, mask ``[B, T]``; zeros elsewhere."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        pos = mask[b].nonzero().squeeze(1)
        if len(pos):
            out = out.index_put((torch.full_like(pos, b), pos), conv(x[b : b + 1, pos])[0][0])
    return out


def oracle(mixer: MoM, x: torch.Tensor) -> torch.Tensor:
    """MATH.md 6 masking oracle: every memory over the whole sequence, frozen (beta = 0 or k = 0, g = 0)
    where it is not routed, output weight 0 there; the conv runs per routed subsequence."""
    B, T, _ = x.shape
    M, H, K, V = mixer.n_memories, mixer.n_heads, mixer.head_dim, mixer.value_dim
    weights, index = mixer.route(x)
    wfull = torch.zeros(B, T, M, dtype=x.dtype).scatter(-1, index, weights)  # (B, T, M)
    routed = torch.zeros(B, T, M, dtype=torch.bool).scatter(-1, index, True)  # (B, T, M)
    q, k, v, beta, g = mixer.project(x)
    o = 0
    for m in range(mixer.n_slots):
        mask = routed[..., m] if m < M else torch.ones(B, T, dtype=torch.bool)  # slot M: shared
        qm, km, vm = q, k[:, :, m], v[:, :, m]
        if mixer.convs is not None:
            qm, km, vm = (routed_conv(mixer.convs[n], t, mask) for n, t in zip("qkv", (qm, km, vm)))
        else:
            qm, km = F.silu(qm), F.silu(km)
        qm, km = F.normalize(qm.view(B, T, H, K), dim=-1), F.normalize(km.view(B, T, H, K), dim=-1)
        vm, gm = vm.view(B, T, H, V), g[:, :, m]
        gm = torch.where(mask.view(B, T, *[1] * (gm.dim() - 2)), gm, 0.0)  # no decay where not routed
        if mixer.recurrence == "gla":
            om = decay_scan(qm, km * mask[..., None, None], vm, gm, backend="naive")[0]  # no write
        else:
            bm = torch.where(mask[..., None], beta[:, :, m], 0.0)  # no write
            om = delta_scan(qm, km, vm, bm, gm, backend="naive")[0]
        o = o + (wfull[..., m, None, None] if m < M else 1.0) * om
    o = mixer.norm(o, mixer.g_proj(x).view(B, T, H, V))
    return mixer.o_proj(o.reshape(B, T, H * V))


def grads(mixer: MoM, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Gradients of ``<y, r>`` (r fixed) w.r.t. every parameter and x."""
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    names = [n for n, _ in mixer.named_parameters()]
    found = torch.autograd.grad((y * r).sum(), [p for _, p in mixer.named_parameters()] + [x], allow_unused=True)
    return dict(zip(names + ["x"], found))


def assert_states(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for key, e in expected.items():
        torch.testing.assert_close(actual[key], e, msg=lambda m: f"{what} state[{key!r}]: {m}", **TOL)


ORACLE_CASES = [
    {},
    {"use_short_conv": False},
    {"shared_memory": False, "top_k": 1},
    {"n_memories": 3, "top_k": 3, "allow_neg_eigval": True},
    {"n_memories": 6, "top_k": 2, "use_short_conv": False, "shared_memory": False},
]
ORACLE_IDS = ["default", "no-conv", "no-shared-top1", "all-memories-negeig", "M6-bare"]


@pytest.mark.parametrize("opts", ORACLE_CASES, ids=ORACLE_IDS)
def test_routed_equals_masking_oracle(opts):
    mixer, x = make(**opts), inputs(2, 13).requires_grad_(True)
    y = mixer(x)[0]
    counts = torch.bincount(mixer.router_index.flatten(), minlength=mixer.n_memories)
    assert (counts > 0).sum() >= min(2, mixer.n_memories), "degenerate routing: the test would prove little"
    y_ref = oracle(mixer, x)
    torch.testing.assert_close(y, y_ref, **TOL)
    g, g_ref = grads(mixer, x, y), grads(mixer, x, y_ref)
    for name, e in g_ref.items():
        assert e is not None and g[name] is not None, name
        torch.testing.assert_close(g[name], e, msg=lambda m: f"grad {name}: {m}", **TOL)


def test_routed_equals_masking_oracle_over_several_chunks():
    mixer, x = make(), inputs(1, 150).requires_grad_(True)  # segments of ~75 and 150 tokens: 2-3 chunks
    y, y_ref = mixer(x)[0], oracle(mixer, x)
    torch.testing.assert_close(y, y_ref, **TOL)
    g, g_ref = grads(mixer, x, y), grads(mixer, x, y_ref)
    for name, e in g_ref.items():
        torch.testing.assert_close(g[name], e, msg=lambda m: f"grad {name}: {m}", **TOL)


def test_gla_equals_masking_oracle():
    mixer, x = make(recurrence="gla"), inputs(2, 13).requires_grad_(True)
    y, y_ref = mixer(x)[0], oracle(mixer, x)
    torch.testing.assert_close(y, y_ref, **TOL)
    g, g_ref = grads(mixer, x, y), grads(mixer, x, y_ref)
    for name, e in g_ref.items():
        torch.testing.assert_close(g[name], e, msg=lambda m: f"grad {name}: {m}", **TOL)


@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_decode_leaves_unselected_states_bit_identical(recurrence):
    mixer, x = make(recurrence=recurrence), inputs(3, 8)
    _, state = mixer(x[:, :7])
    _, new = mixer(x[:, 7:8], state)
    picked = mixer.router_index[:, 0]  # (N, k)
    for n in range(3):
        for m in range(mixer.n_memories):
            same = [torch.equal(new[key][n, m], state[key][n, m]) for key in state]
            assert all(same) if m not in picked[n] else not any(same), (n, m, same)
        assert not torch.equal(new["S"][n, -1], state["S"][n, -1])  # the shared memory steps


@pytest.mark.parametrize("T", [1, 9], ids=["decode", "forward"])
def test_unpicked_memory_passes_its_state_bit_for_bit(T):
    mixer, x = make(), inputs(2, 9)
    _, state = mixer(inputs(2, 6, seed=5))
    assert state["S"][:, 3].abs().sum() > 0  # memory 3 holds something to pass on
    with torch.no_grad():  # a constant feature that memory 3's logit punishes
        x[..., 0] = 5.0
        mixer.router.weight[3] = 0.0
        mixer.router.weight[3, 0] = -100.0
    _, new = mixer(x[:, :T], state)
    assert not (mixer.router_index == 3).any()
    for key in state:
        assert torch.equal(new[key][:, 3], state[key][:, 3]), key


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "carried-state"])
@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_varlen_equals_per_sequence(recurrence, with_state):
    mixer, lengths = make(recurrence=recurrence), [5, 9, 1, 7]
    x = inputs(1, sum(lengths), seed=2)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    init = mixer(inputs(len(lengths), 6, seed=3))[1] if with_state else None
    y, state = mixer(x, init, cu_seqlens=cu)
    for n in range(len(lengths)):
        row = None if init is None else {key: s[n : n + 1] for key, s in init.items()}
        y_n, s_n = mixer(x[:, cu[n] : cu[n + 1]], row)
        torch.testing.assert_close(y[:, cu[n] : cu[n + 1]], y_n, **TOL)
        assert_states({key: s[n : n + 1] for key, s in state.items()}, s_n, f"sequence {n}")


def test_packed_decode_equals_batched_decode():
    mixer, x = make(), inputs(4, 1, seed=4)
    _, state = mixer(inputs(4, 5, seed=3))
    y, s = mixer(x, state)
    y_packed, s_packed = mixer(x.transpose(0, 1), state, cu_seqlens=torch.arange(5))
    torch.testing.assert_close(y_packed, y.transpose(0, 1), **TOL)
    assert_states(s_packed, s, "packed decode")


@pytest.mark.parametrize("t", [1, 9, 22])
@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_split_and_carry_equals_one_call(recurrence, t):
    mixer, x = make(recurrence=recurrence), inputs(2, 23)
    y, state = mixer(x)
    y1, s1 = mixer(x[:, :t])
    y2, s2 = mixer(x[:, t:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, **TOL)
    assert_states(s2, state, "split")


# decode loop == one forward, split-and-carry, varlen, gradients: the generic checks of tests/nn/test_mixers.py


def hand_routed(logits: list[list[float]]) -> tuple[MoM, torch.Tensor]:
    """A 4-memory top-2 layer whose router logits are the first 4 features of x (set by hand)."""
    mixer = make(n_memories=4, top_k=2)
    with torch.no_grad():
        mixer.router.weight.zero_()
        mixer.router.weight[:, :4] = torch.eye(4, dtype=torch.float64)
    x = torch.zeros(1, len(logits), D_MODEL, dtype=torch.float64)
    x[0, :, :4] = torch.tensor(logits, dtype=torch.float64)
    x[0, :, 4:] = inputs(1, len(logits))[0, :, 4:]
    return mixer, x


def test_balance_loss_analytic():
    e = math.e
    # balanced: token i picks i (logit 2) and i + 1 (logit 1): f_e = 1/2, Pbar_e = 1/4 -> E sum f Pbar = k = 2
    mixer, x = hand_routed([[2, 1, -3, -3], [-3, 2, 1, -3], [-3, -3, 2, 1], [1, -3, -3, 2]])
    mixer(x)
    torch.testing.assert_close(mixer.aux_loss, torch.tensor(2.0, dtype=torch.float64), **TOL)
    # collapsed: every token picks {0, 1}: f = (1, 1, 0, 0), Pbar = (a, 1 - a, 0, 0) -> E = 4
    mixer, x = hand_routed([[2, 1, 0, 0]] * 3)
    mixer(x)
    torch.testing.assert_close(mixer.aux_loss, torch.tensor(4.0, dtype=torch.float64), **TOL)
    # generic: token 0 picks {0, 1} with a = e^3 / (e^3 + e), token 1 picks {2, 1} with b = e^2 / (e^2 + e^0.5)
    mixer, x = hand_routed([[3, 1, 0, 0], [0, 0.5, 2, -1]])
    mixer(x)
    a, b = e**3 / (e**3 + e), e**2 / (e**2 + e**0.5)
    f, pbar = [1 / 2, 1, 1 / 2, 0], [a / 2, (1 - a + 1 - b) / 2, b / 2, 0]
    expected = 4 * sum(fe * pe for fe, pe in zip(f, pbar))
    torch.testing.assert_close(mixer.aux_loss, torch.tensor(expected, dtype=torch.float64), **TOL)
    assert mixer.router_index.tolist() == [[[0, 1], [2, 1]]]


def test_balance_loss_gradient_reaches_router():
    mixer, x = hand_routed([[3, 1, 0, 0], [0, 0.5, 2, -1], [1, -1, 0.3, 2]])
    mixer(x)
    (grad,) = torch.autograd.grad(mixer.aux_loss, mixer.router.weight)
    assert grad.abs().sum() > 0
    W, eps = mixer.router.weight.detach().clone(), 1e-6
    for i, j in [(0, 0), (1, 1), (2, 2), (3, 3), (1, 0), (2, 5)]:
        losses = []
        for sign in (1, -1):
            with torch.no_grad():
                mixer.router.weight.copy_(W)
                mixer.router.weight[i, j] += sign * eps
            mixer.route(x)
            losses.append(mixer.aux_loss.item())
        assert abs((losses[0] - losses[1]) / (2 * eps) - grad[i, j].item()) < 1e-6, (i, j)


def test_balance_loss_matches_forward_routing():
    mixer, x = make(n_memories=5, top_k=3), inputs(2, 7)
    mixer(x)
    weights, index = mixer.route(x)
    torch.testing.assert_close(mixer.aux_loss, balance_loss(weights, index, 5), **TOL)


@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_gradients_finite_and_reach_every_parameter(recurrence):
    torch.manual_seed(0)
    mixer, x = MoM(D_MODEL, N_HEADS, recurrence=recurrence), inputs(2, 9).float().requires_grad_(True)
    y, state = mixer(x)
    aux = mixer.aux_loss
    y2, _ = mixer(torch.randn_like(x), state)  # backprop through a carried state too
    (y.square().mean() + y2.square().mean() + 0.01 * (aux + mixer.aux_loss)).backward()
    missing = [n for n, p in mixer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters()) and torch.isfinite(x.grad).all()


def test_bad_options_raise():
    with pytest.raises(ValueError, match="top_k"):
        MoM(D_MODEL, N_HEADS, n_memories=2, top_k=3)
    with pytest.raises(ValueError, match="top_k"):
        MoM(D_MODEL, N_HEADS, top_k=0)
    with pytest.raises(ValueError, match="recurrence"):
        MoM(D_MODEL, N_HEADS, recurrence="mamba")
    with pytest.raises(ValueError, match="allow_neg_eigval"):
        MoM(D_MODEL, N_HEADS, recurrence="gla", allow_neg_eigval=True)
    mixer, x = make(), inputs(2, 5)
    _, state = mixer(x)
    with pytest.raises(ValueError, match="state"):
        mixer(x[:1], state)
    with pytest.raises(ValueError, match="cu_seqlens"):
        mixer(x, cu_seqlens=torch.tensor([0, 5]))
    mixer.sequence_group = object()
    with pytest.raises(ValueError, match="mom: sequence parallelism not supported yet"):
        mixer(x)
