"""Generic checks shared by the per-family op tests.

A case is ``(op, inputs, time_keys)``: ``op`` is a public scan
(``decay_scan``, ...), ``inputs`` the keyword arguments of one call
(tensors and options, ``initial_state`` included or not) and ``time_keys``
the names of the inputs indexed by time on axis 1. States may be tensors or
tuples of tensors (mLSTM).
"""

from __future__ import annotations

import torch

F64 = dict(rtol=1e-9, atol=1e-9)


def flat(state):
    if state is None:
        return []
    return list(state) if isinstance(state, tuple) else [state]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64."""
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def assert_close(actual, expected, what: str, **tol):
    for i, (a, e) in enumerate(zip(flat(actual), flat(expected))):
        torch.testing.assert_close(a, e, msg=lambda m: f"{what}[{i}]: {m}", **(tol or F64))


def leaves(inputs: dict) -> dict:
    """Fresh float leaves requiring grad, one per floating tensor input (tuple states included)."""
    out = {}
    for name, x in inputs.items():
        if isinstance(x, torch.Tensor) and x.dtype.is_floating_point:
            out[name] = x.detach().clone().requires_grad_(True)
        elif isinstance(x, tuple):
            out[name] = tuple(t.detach().clone().requires_grad_(True) for t in x)
        else:
            out[name] = x
    return out


def grads_of(inputs: dict) -> dict:
    out = {}
    for name, x in inputs.items():
        for i, t in enumerate(flat(x) if isinstance(x, (tuple, torch.Tensor)) else []):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                out[f"{name}[{i}]"] = torch.zeros_like(t) if t.grad is None else t.grad
    return out


def forward_backward(op, inputs: dict, backend: str, seed: int = 0, **options):
    """Run ``op`` with final state, backprop a fixed random projection of (o, state).

    Returns ``(o, state, grads)`` with grads keyed ``"name[i]"``.
    """
    x = leaves(inputs)
    o, state = op(**x, backend=backend, output_final_state=True, **options)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in [o, *flat(state)])
    loss.backward()
    return o.detach(), tuple(s.detach() for s in flat(state)), grads_of(x)


def assert_matches_naive(op, inputs: dict, backend: str = "chunk", tol=None, **options):
    """Outputs, final states and every input gradient of ``backend`` equal the naive backend's."""
    tol = tol or F64
    o_ref, s_ref, g_ref = forward_backward(op, inputs, "naive", **options)
    o, s, g = forward_backward(op, inputs, backend, **options)
    assert_close(o, o_ref, "o", **tol)
    assert_close(s, s_ref, "state", **tol)
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert_close(g[name], g_ref[name], f"grad {name}", **tol)


def time_slice(inputs: dict, time_keys, start: int, stop: int) -> dict:
    """Slice the time-indexed inputs (rank >= 3; a per-head [H] gate is not) to [start, stop)."""
    return {n: (x[:, start:stop] if n in time_keys and x is not None and x.dim() >= 3 else x) for n, x in inputs.items()}


def assert_state_passing(op, inputs: dict, time_keys, split: int, backend: str = "chunk", **options):
    """One pass over T equals a pass over [0, split) then [split, T) carrying the state."""
    T = inputs["q"].shape[1]
    o, s = op(**inputs, backend=backend, output_final_state=True, **options)
    o1, s1 = op(**time_slice(inputs, time_keys, 0, split), backend=backend, output_final_state=True, **options)
    rest = time_slice(inputs, time_keys, split, T) | {"initial_state": s1}
    o2, s2 = op(**rest, backend=backend, output_final_state=True, **options)
    assert_close(torch.cat([o1, o2], dim=1), o, "o")
    assert_close(s2, s, "state")


def assert_decode_matches(op, inputs: dict, time_keys, zero_state, backend: str = "chunk", **options):
    """A loop of T == 1 steps (each carrying the state) equals the full scan."""
    T = inputs["q"].shape[1]
    o, s = op(**inputs, backend=backend, output_final_state=True, **options)
    state = inputs.get("initial_state")
    state = zero_state if state is None else state
    outs = []
    for t in range(T):
        o_t, state = op(**time_slice(inputs, time_keys, t, t + 1) | {"initial_state": state},
                        backend=backend, output_final_state=True, **options)
        outs.append(o_t)
    assert_close(torch.cat(outs, dim=1), o, "o")
    assert_close(state, s, "state")


def assert_varlen_matches_loop(op, inputs: dict, time_keys, cu_seqlens: torch.Tensor,
                               backend: str = "chunk", **options):
    """A packed batch (B == 1, ``cu_seqlens``) equals a loop over its sequences, gradients included."""
    x = leaves(inputs)
    o, s = op(**x, cu_seqlens=cu_seqlens, backend=backend, output_final_state=True, **options)
    h0 = x.get("initial_state")
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for n, (bos, eos) in enumerate(zip(bounds[:-1], bounds[1:])):
        row = None if h0 is None else (tuple(t[n:n + 1] for t in h0) if isinstance(h0, tuple) else h0[n:n + 1])
        piece = time_slice(x, time_keys, bos, eos) | {"initial_state": row}
        o_n, s_n = op(**piece, backend=backend, output_final_state=True, **options)
        outs.append(o_n)
        states.append(flat(s_n))
    o_loop = torch.cat(outs, dim=1)
    s_loop = [torch.cat(parts, dim=0) for parts in zip(*states)]
    assert_close(o, o_loop, "o")
    assert_close(flat(s), s_loop, "state")
    w = torch.randn_like(o)
    g_packed = torch.autograd.grad((o * w).sum(), [t for t in _tensors(x)], allow_unused=True)
    g_loop = torch.autograd.grad((o_loop * w).sum(), [t for t in _tensors(x)], allow_unused=True)
    for a, b in zip(g_packed, g_loop):
        if a is not None or b is not None:
            assert_close(a, b, "varlen grad")


def _tensors(x: dict):
    for v in x.values():
        for t in flat(v) if isinstance(v, (tuple, torch.Tensor)) else []:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                yield t


def float32_errors(op, inputs: dict, **options) -> tuple[list[float], list[float]]:
    """Relative errors against the float64 naive of (o, *state) for the float32 chunk and float32 naive.

    ``inputs`` are float64; the float32 naive's error is the yardstick of what float32 can do.
    """
    ref = op(**inputs, output_final_state=True, backend="naive", **options)
    f32 = {n: (x.float() if isinstance(x, torch.Tensor) else
               tuple(t.float() for t in x) if isinstance(x, tuple) else x) for n, x in inputs.items()}
    result = {}
    for backend in ("chunk", "naive"):
        o, s = op(**f32, output_final_state=True, backend=backend, **options)
        assert o.dtype == torch.float32 and torch.isfinite(o).all(), backend
        result[backend] = [rel_err(x, r) for x, r in zip([o, *flat(s)], [ref[0], *flat(ref[1])])]
    return result["chunk"], result["naive"]


def assert_float32_precision(op, inputs: dict, label: str, bound: float = 1e-5, **options) -> list[float]:
    """float32 chunk within ``bound`` of the float64 naive and within 2x the float32 naive's error."""
    errs, errs_loop = float32_errors(op, inputs, **options)
    print(f"{label}: rel err o {errs[0]:.2e} (float32 naive {errs_loop[0]:.2e}), "
          f"states {', '.join(f'{e:.2e}' for e in errs[1:])}")
    assert max(errs) <= bound, errs
    assert all(e <= 2 * e_loop + 1e-7 for e, e_loop in zip(errs, errs_loop)), (errs, errs_loop)
    return errs


def forbid(monkeypatch, module, name: str = "_chunked") -> None:
    """Make ``module.name`` raise, proving that a path (the T == 1 decode step) never reaches it."""
    def boom(*args, **kwargs):
        raise AssertionError(f"the T == 1 step went through {module.__name__}.{name}")

    monkeypatch.setattr(module, name, boom)
