"""Softmax attention: sliding window against a hand-built masked softmax, KV cache, packed batches."""

from __future__ import annotations

import pytest
import torch

from linscan.nn import token_positions
from linscan.nn.mixers import Attention

TOL = dict(rtol=1e-9, atol=1e-9)


def reference(attn: Attention, x: torch.Tensor, window: int | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v with the mask written out position by position."""
    B, T, _ = x.shape
    H, D = attn.n_heads, attn.head_dim
    pos = token_positions(None, B, T)
    q = attn.rotary(attn.q_proj(x).view(B, T, H, D), pos).transpose(1, 2)  # (B, H, T, D)
    k = attn.rotary(attn.k_proj(x).view(B, T, H, D), pos).transpose(1, 2)  # (B, H, T, D)
    v = attn.v_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    bias = torch.full((T, T), float("-inf"), dtype=x.dtype)
    for i in range(T):
        for j in range(T):
            if j <= i and (window is None or i - j < window):
                bias[i, j] = 0.0
    p = torch.softmax(q @ k.transpose(-1, -2) / D**0.5 + bias, dim=-1)
    return attn.o_proj((p @ v).transpose(1, 2).reshape(B, T, H * D))


@pytest.mark.parametrize("window", [None, 1, 4, 100])
def test_matches_masked_softmax(window):
    torch.manual_seed(0)
    attn, x = Attention(32, 4, window=window).double(), torch.randn(2, 15, 32, dtype=torch.float64)
    torch.testing.assert_close(attn(x)[0], reference(attn, x, window), **TOL)


@pytest.mark.parametrize("window", [None, 3])
def test_kv_cache_decode_and_trim(window):
    torch.manual_seed(0)
    attn, x = Attention(32, 2, window=window).double(), torch.randn(3, 12, 32, dtype=torch.float64)
    y, state = attn(x)
    assert state["pos"].tolist() == [12, 12, 12]
    assert state["k"].shape[1] == (12 if window is None else window - 1)
    y1, s = attn(x[:, :5])  # prefill, then decode
    steps = [y1]
    for t in range(5, 12):
        y_t, s = attn(x[:, t : t + 1], s)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, dim=1), y, **TOL)
    torch.testing.assert_close(s["k"], state["k"], **TOL)


def test_packed_mask_is_block_diagonal():
    torch.manual_seed(0)
    attn = Attention(32, 2, window=6).double()
    x, cu = torch.randn(1, 14, 32, dtype=torch.float64), torch.tensor([0, 4, 12, 14])
    y, _ = attn(x, cu_seqlens=cu)
    x2 = x.clone()
    x2[:, 4:12] = torch.randn(1, 8, 32, dtype=torch.float64)
    y2, _ = attn(x2, cu_seqlens=cu)
    assert torch.equal(y[:, :4], y2[:, :4]) and torch.equal(y[:, 12:], y2[:, 12:])
    torch.testing.assert_close(y[:, 4:12], reference(attn, x[:, 4:12], 6), **TOL)


# ---- L-Mul attention (linscan.numerics.lmul_attention inside the mixer) ---------------------------

def test_lmul_attention_option_matches_the_numerics_reference():
    from linscan.numerics import lmul_attention
    torch.manual_seed(3)
    layer = Attention(16, 2)
    x = torch.randn(2, 7, 16)
    exact, _ = layer(x)
    q, k, v = layer.project(x)
    positions = torch.arange(7).expand(2, 7)
    q, k = layer.rotary(q, positions), layer.rotary(k, positions)
    for bits in (None, 4, 3):
        lmul = Attention(16, 2, lmul=True, lmul_bits=bits)
        lmul.load_state_dict(layer.state_dict())
        y, _ = lmul(x)
        want = layer.o_proj(lmul_attention(q, k, v, mantissa_bits=bits).reshape(2, 7, 16))
        torch.testing.assert_close(y, want)
        error = ((y - exact).norm() / exact.norm()).item()
        assert 1e-4 < error < 0.2, (bits, error)          # approximate, but close


def test_lmul_attention_refuses_what_it_does_not_emulate():
    layer = Attention(16, 2, lmul=True)
    _, cache = Attention(16, 2)(torch.randn(1, 3, 16))
    with pytest.raises(NotImplementedError, match="lmul=True"):
        layer(torch.randn(1, 1, 16), state=cache)
    with pytest.raises(ValueError, match=r"lmul_bits: expected None or an int in 1..23, got 0"):
        Attention(16, 2, lmul=True, lmul_bits=0)
