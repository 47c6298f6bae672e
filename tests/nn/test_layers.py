"""Building blocks: short conv, RoPE, norms, SwiGLU, Lightning slopes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from linscan.nn import GatedRMSNorm, RMSNorm, RotaryEmbedding, ShortConv, SwiGLU, token_positions
from linscan.nn.mixers import Lightning, RetNet, lightning_slopes

TOL = dict(rtol=1e-9, atol=1e-9)


def conv_reference(conv: ShortConv, x: torch.Tensor) -> torch.Tensor:
    """Plain causal conv of one batch [B, T, D] (left zero padding), then SiLU."""
    W = conv.kernel_size
    y = F.conv1d(F.pad(x.transpose(1, 2), (W - 1, 0)), conv.conv.weight, conv.conv.bias, groups=x.shape[-1])
    return F.silu(y.transpose(1, 2))


def test_conv_decode_equals_full():
    torch.manual_seed(0)
    conv, x = ShortConv(6, 4, bias=True).double(), torch.randn(2, 10, 6, dtype=torch.float64)
    y, state = conv(x)
    torch.testing.assert_close(y, conv_reference(conv, x), **TOL)
    torch.testing.assert_close(state, x[:, -3:].transpose(1, 2), **TOL)
    steps, s = [], None
    for t in range(x.shape[1]):
        y_t, s = conv(x[:, t : t + 1], s)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, dim=1), y, **TOL)
    torch.testing.assert_close(s, state, **TOL)


def test_conv_no_leak_across_sequences():
    torch.manual_seed(0)
    conv, lengths = ShortConv(5, 4).double(), [2, 6, 1, 4]
    x = torch.randn(1, sum(lengths), 5, dtype=torch.float64)
    cu = torch.tensor([0, 2, 8, 9, 13])
    y, state = conv(x, cu_seqlens=cu)
    for n, (bos, eos) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        y_n, s_n = conv(x[:, bos:eos])
        torch.testing.assert_close(y[:, bos:eos], y_n, **TOL)
        torch.testing.assert_close(state[n : n + 1], s_n, **TOL)
    # short sequences keep zeros for the inputs they never saw
    assert torch.equal(state[2, :, :2], torch.zeros(5, 2, dtype=torch.float64))
    # changing one sequence changes no other sequence's output
    x2 = x.clone()
    x2[:, 2:8] += 1.0
    y2, _ = conv(x2, cu_seqlens=cu)
    assert torch.equal(y2[:, :2], y[:, :2]) and torch.equal(y2[:, 8:], y[:, 8:])


def test_rope_offset_equals_slice_of_longer():
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 12, 3, 8, dtype=torch.float64)
    full = rope(x, token_positions(None, 2, 12))
    tail = rope(x[:, 5:], token_positions(torch.tensor([5, 5]), 2, 7))
    torch.testing.assert_close(tail, full[:, 5:], **TOL)
    # a rotation: norms are kept, and q.k depends only on the position difference
    torch.testing.assert_close(full.norm(dim=-1), x.norm(dim=-1), **TOL)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    def dot(i, j):
        return (rope(q.view(1, 1, 1, 8), torch.tensor([i])) * rope(k.view(1, 1, 1, 8), torch.tensor([j]))).sum()

    torch.testing.assert_close(dot(7, 3), dot(104, 100), **TOL)


def test_token_positions_packed():
    cu = torch.tensor([0, 3, 4, 7], dtype=torch.int32)
    pos = token_positions(torch.tensor([10, 0, 2]), 1, 7, cu)
    assert pos.tolist() == [[10, 11, 12, 0, 2, 3, 4]]


def test_norms():
    x, gate = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    ref = x / (x.square().mean(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(RMSNorm(7).double()(x), ref, **TOL)
    torch.testing.assert_close(GatedRMSNorm(7).double()(x, gate), ref * F.silu(gate), **TOL)
    sigmoid_norm = GatedRMSNorm(7, activation="sigmoid").double()
    torch.testing.assert_close(sigmoid_norm(x, gate), ref * gate.sigmoid(), **TOL)
    assert RMSNorm(7)(x.bfloat16()).dtype == torch.bfloat16


def test_swiglu():
    torch.manual_seed(0)
    mlp = SwiGLU(48)
    assert mlp.hidden_dim == 128  # 8/3 * 48 = 128, already a multiple of 32
    x = torch.randn(2, 5, 48)
    ref = mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(mlp(x), ref)


def test_lightning_slopes_h8():
    expected = [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert lightning_slopes(8).tolist() == expected
    torch.testing.assert_close(Lightning(64, 8).log_decay, -torch.tensor(expected))
    # H = 16: start = 2^(-1/2)
    torch.testing.assert_close(lightning_slopes(16)[:2], torch.tensor([2 ** -0.5, 0.5], dtype=torch.float64))


def test_retnet_decays():
    expected = [math.log(1 - 2 ** (-5 - h)) for h in range(4)]
    torch.testing.assert_close(RetNet(32, 4).log_decay, torch.tensor(expected, dtype=torch.float32))
