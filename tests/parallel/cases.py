"""Inputs for the sequence-parallel tests: one global problem, sliced per rank, and the loss.

A case is a dict: family ("decay" | "delta"), g form, R, initial_state, cu_seqlens, T, dtype.
``make(case)`` builds the global tensors from a fixed seed (the same on every rank and in
the reference); ``loss(o, final, w_o, w_f)`` weighs every output and final-state entry by fixed
random weights, so that every gradient path is exercised.
"""

from __future__ import annotations

import torch

B, H, K, V = 2, 2, 8, 6


def make(case: dict) -> dict:
    gen = torch.Generator().manual_seed(case.get("seed", 0))
    dtype = case.get("dtype", torch.float64)
    T, R = case["T"], case.get("R", 1)
    batch = 1 if case.get("cu") else B

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    x = {"q": rand(batch, T, H, K)}
    rows = (batch, T, R, H) if R > 1 else (batch, T, H)
    x["k"] = torch.nn.functional.normalize(rand(*rows, K), dim=-1)
    x["v"] = rand(*rows, V)
    if case["family"] == "delta":
        x["beta"] = (2 * torch.rand(*rows, generator=gen, dtype=torch.float64)).to(dtype)
    form = case.get("g")
    if form == "H":
        x["g"] = -0.3 * torch.rand(H, generator=gen, dtype=torch.float64).to(dtype)
    elif form == "BTH":
        x["g"] = -0.5 * torch.rand(batch, T, H, generator=gen, dtype=torch.float64).to(dtype)
    elif form == "BTHK":
        x["g"] = -0.5 * torch.rand(batch, T, H, K, generator=gen, dtype=torch.float64).to(dtype)
    else:
        x["g"] = None
    n = len(case["cu"]) - 1 if case.get("cu") else batch
    x["h0"] = rand(n, H, K, V) if case.get("h0") else None
    x["w_o"] = torch.randn(batch, T, H, V, generator=gen, dtype=torch.float64)
    x["w_f"] = torch.randn(n, H, K, V, generator=gen, dtype=torch.float64)
    x["cu"] = None if not case.get("cu") else torch.tensor(case["cu"], dtype=torch.int32)
    return x


TIMED = ("q", "k", "v", "beta")          # tensors with a time axis (g too, unless it is per head)


def time_sliced(name: str, x) -> bool:
    return x is not None and (name in TIMED or (name == "g" and x.dim() > 1))


def loss(o, final, w_o, w_f) -> torch.Tensor:
    """sum(o * w_o) + sum(final * w_f) (w_o: the weights of the tokens o covers)."""
    total = (o.double() * w_o).sum()
    return total if final is None else total + (final.double() * w_f).sum()


def leaves(x: dict) -> dict:
    """The differentiable inputs, fresh leaves."""
    return {n: t.detach().clone().requires_grad_() for n, t in x.items()
            if n in ("q", "k", "v", "beta", "g", "h0") and t is not None}
