"""Float32 chunk backends against float64 ``naive`` with one extreme log-decay (README, Reliability).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tools/chunk_numerics.py

T = 128, H = 2, K = V = 16, log-decays U(-0.5, 0) with one spike at t = 40 (-inf, -1e4, -1e8).
Prints, per family and spike, the max error relative to the largest entry of the output and of
the worst input gradient (loss: sum of squared outputs). Run on an older commit for "before".
"""

import math

import torch

from linscan.ops import decay_scan, delta_scan

B, T, H, K, V, SPIKE_AT = 1, 128, 2, 16, 16, 40


def errors(family: str, spike: float, diagonal: bool = False) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, d, generator=gen, dtype=torch.float64) for d in (K, K, V))
    k = torch.nn.functional.normalize(k, dim=-1)
    g = -0.5 * torch.rand((B, T, H, K) if diagonal else (B, T, H), generator=gen, dtype=torch.float64)
    g[:, SPIKE_AT] = spike
    results = []
    for dtype, backend in ((torch.float64, "naive"), (torch.float32, "chunk")):
        x = [t.detach().to(dtype).clone().requires_grad_() for t in (q, k, v, g)]
        if family == "decay":
            o, _ = decay_scan(*x, backend=backend)
        else:
            o, _ = delta_scan(x[0], x[1], x[2], torch.full((B, T, H), 0.7, dtype=dtype), x[3], backend=backend)
        o.square().sum().backward()
        results.append((o.detach().double(), [t.grad.double() for t in x]))
    (o64, g64), (o32, g32) = results
    out = ((o32 - o64).abs().max() / o64.abs().max()).item()
    grad = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(g32, g64))
    return out, grad


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"{'case':<24} {'output':>9} {'gradient':>9}")
    for family, diagonal in (("decay", False), ("decay", True), ("delta", False)):
        for spike in (-math.inf, -1e4, -1e8):
            name = f"{family}{' diagonal' if diagonal else ''} g={spike:g}"
            print(f"{name:<24} " + " ".join(f"{e:>9.1e}" for e in errors(family, spike, diagonal)))
