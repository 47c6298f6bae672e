"""additive_scan (LightNet, MATH.md 8.1): the softmax-weighted running mean, states, decode,
varlen, the non-causal form under any flattening of a grid."""

import pytest
import torch

from linscan.ops.additive import additive_scan

B, H, K, V = 2, 2, 4, 3


def make_qkv(T, *, key_size=1.0, seed=0, batch=B):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, T, H, d, generator=gen, dtype=torch.float64) for d in (K, K, V))
    if key_size > 1:   # keys of +-key_size: plain exponentials overflow float32 from about 89
        k = key_size * torch.sign(k) + 0.1 * torch.randn(k.shape, generator=gen, dtype=torch.float64)
    return q, k, v


def softmax_mean(q, k, v, scale, *, causal=True):
    """Row c of S_t = sum_{s<=t} softmax_{<=t}(k_{., c})_s v_s, o_t = S_t^T (scale q_t), literally."""
    T = q.shape[1]
    outs = []
    for t in range(T):
        end = t + 1 if causal else T
        weights = torch.softmax(k[:, :end], dim=1)                          # (B, end, H, K)
        S = torch.einsum("bshk,bshv->bhkv", weights, v[:, :end])
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(outs, dim=1)


def grads(fn, q, k, v, probe):
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    (fn(q, k, v) * probe).sum().backward()
    return q.grad, k.grad, v.grad


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize("T, key_size", [(1, 1.0), (37, 1.0), (37, 50.0)])
def test_causal_matches_softmax_running_mean_with_gradients(backend, T, key_size):
    q, k, v = make_qkv(T, key_size=key_size)
    o, _ = additive_scan(q, k, v, scale=0.7, backend=backend)
    ref = softmax_mean(q, k, v, 0.7)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-10)
    probe = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = grads(lambda *x: additive_scan(*x, scale=0.7, backend=backend)[0], q, k, v, probe)
    want = grads(lambda *x: softmax_mean(*x, 0.7), q, k, v, probe)
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"d{name}")


def test_float32_with_large_keys_is_finite_and_accurate():
    q, k, v = make_qkv(37, key_size=90.0, seed=1)          # e^90 overflows float32
    o, (S, z) = additive_scan(*(x.float() for x in (q, k, v)), output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(S).all() and torch.isfinite(z).all()
    ref = softmax_mean(q, k, v, K ** -0.5)
    torch.testing.assert_close(o.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_split_and_carry_equals_one_pass(causal):
    q, k, v = make_qkv(37, seed=2)
    o, (S, z) = additive_scan(q, k, v, causal=causal, output_final_state=True)
    first, state = additive_scan(q[:, :15], k[:, :15], v[:, :15], causal=causal, output_final_state=True)
    second, (S2, z2) = additive_scan(q[:, 15:], k[:, 15:], v[:, 15:], causal=causal,
                                     initial_state=state, output_final_state=True)
    # non-causal: the second part reads the mean over both parts, as the one pass does everywhere
    torch.testing.assert_close(second, o[:, 15:], rtol=1e-12, atol=1e-12)
    if causal:
        torch.testing.assert_close(first, o[:, :15], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S2, S, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z2, z, rtol=1e-12, atol=1e-12)


def test_decode_loop_equals_one_pass():
    q, k, v = make_qkv(12, key_size=20.0, seed=3)
    o, (S, z) = additive_scan(q, k, v, output_final_state=True)
    state, steps = None, []
    for t in range(12):
        o_t, state = additive_scan(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], initial_state=state,
                                   output_final_state=True)
        steps.append(o_t)
    torch.testing.assert_close(torch.cat(steps, dim=1), o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[0], S, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[1], z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_equals_per_sequence(causal):
    lengths = [5, 1, 9]
    q, k, v = make_qkv(sum(lengths), seed=4, batch=1)
    gen = torch.Generator().manual_seed(6)
    S0 = torch.randn(3, H, K, V, generator=gen, dtype=torch.float64)
    z0 = torch.randn(3, H, K, generator=gen, dtype=torch.float64)
    cu = torch.tensor([0, 5, 6, 15])
    o, (S, z) = additive_scan(q, k, v, causal=causal, initial_state=(S0, z0), output_final_state=True,
                              cu_seqlens=cu)
    for n, (bos, eos) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_n, (S_n, z_n) = additive_scan(q[:, bos:eos], k[:, bos:eos], v[:, bos:eos], causal=causal,
                                        initial_state=(S0[n:n + 1], z0[n:n + 1]), output_final_state=True)
        torch.testing.assert_close(o[:, bos:eos], o_n, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(S[n:n + 1], S_n, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(z[n:n + 1], z_n, rtol=1e-12, atol=1e-12)


def test_noncausal_is_the_same_under_any_flattening_of_a_grid():
    X, Y = 4, 5
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(B, X, Y, H, d, generator=gen, dtype=torch.float64) for d in (K, K, V))
    orders = {
        "row-major": torch.arange(X * Y),
        "column-major": torch.arange(X * Y).view(X, Y).t().reshape(-1),
        "random": torch.randperm(X * Y, generator=gen),
    }
    outs = {}
    for name, order in orders.items():
        flat = [x.reshape(B, X * Y, H, -1)[:, order] for x in (q, k, v)]     # (B, L, H, *)
        o, _ = additive_scan(*flat, causal=False)
        outs[name] = torch.empty_like(o).index_copy_(1, order, o).view(B, X, Y, H, V)   # undo the order
    for name in ("column-major", "random"):
        torch.testing.assert_close(outs[name], outs["row-major"], rtol=1e-12, atol=1e-12, msg=name)
    flat = [x.reshape(B, X * Y, H, -1) for x in (q, k, v)]
    ref = softmax_mean(*flat, K ** -0.5, causal=False)
    torch.testing.assert_close(outs["row-major"].reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)


def test_bad_initial_state_names_the_argument():
    q, k, v = make_qkv(3)
    with pytest.raises(TypeError, match="initial_state: expected a pair"):
        additive_scan(q, k, v, initial_state=torch.zeros(B, H, K, V))
    bad_z = (torch.zeros(B, H, K, V, dtype=torch.float64), torch.zeros(B, H, K + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"initial_state\[1\] \(z\): expected shape \[N, H, K\] = \[2, 2, 4\]"):
        additive_scan(q, k, v, initial_state=bad_z)
