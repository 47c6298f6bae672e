"""The sequential part of every chunkwise backend: the state carried across chunk boundaries.

    x_{n+1} = alpha_n * x_n + u_n,   n = 0 .. N-1

One autograd node with a plain loop each way (one fused op per step, on views
unbound once), instead of a graph of N small nodes: indexing inside the loop, or
one autograd node per step, costs more than the arithmetic at these sizes.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class ChunkStateScan(torch.autograd.Function):
    """alpha: (B, H, N, *A) decays; u: (B, H, N, *D) writes, A a prefix of D (alpha broadcasts over
    the rest); x0: (B, H, *D). Returns every x_n entering chunk n, (B, H, N, *D), and x_N."""

    @staticmethod
    def forward(ctx, alpha, u, x0):
        ctx.alpha_dims = alpha.dim()
        alpha = alpha.view(*alpha.shape, *[1] * (u.dim() - alpha.dim()))   # broadcast over the rest of *D
        entering = torch.empty_like(u)                                       # (B, H, N, *D)
        xs = entering.unbind(2)
        xs[0].copy_(x0)
        for alpha_n, u_n, x_n, x_next in zip(alpha.unbind(2), u.unbind(2), xs, xs[1:]):
            torch.addcmul(u_n, alpha_n, x_n, out=x_next)
        ctx.save_for_backward(alpha, entering)
        return entering, torch.addcmul(u[:, :, -1], alpha[:, :, -1], xs[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, d_entering, d_last):
        alpha, entering = ctx.saved_tensors
        d_after = torch.empty_like(entering)                                 # dL/dx_{n+1} = dL/du_n
        ds = d_after.unbind(2)
        ds[-1].copy_(d_last)
        steps = list(zip(alpha.unbind(2), d_entering.unbind(2), ds, (None,) + ds[:-1]))
        for alpha_n, d_in, d_n, d_prev in reversed(steps[1:]):
            torch.addcmul(d_in, alpha_n, d_n, out=d_prev)
        d_x0 = torch.addcmul(d_entering[:, :, 0], alpha[:, :, 0], ds[0])
        d_alpha = (d_after * entering).sum(dim=tuple(range(ctx.alpha_dims, entering.dim())))
        return d_alpha, d_after, d_x0                                        # grads of alpha, u, x0


def chunk_state_scan(alpha: torch.Tensor, u: torch.Tensor, x0: torch.Tensor):
    """``(entering (B, H, N, *D), final (B, H, *D))`` of x_{n+1} = alpha_n x_n + u_n; see ChunkStateScan."""
    return ChunkStateScan.apply(alpha, u, x0)
