"""Every validation error names the argument, the expected and the received value."""

import re

import pytest
import torch

from linscan.ops import decay_scan, delta_scan, mlstm_scan

B, T, H, K, V = 2, 6, 3, 4, 5


def base():
    return dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
                g=-torch.rand(B, T, H))


def packed():
    x = {n: t[:1] for n, t in base().items()}
    return x


CASES = [
    # (label, change to the inputs, exception type, regex on the message)
    ("q rank", lambda x: x | {"q": x["q"][0]}, ValueError, r"q: expected 4 dims \[B, T, H, K\], got 3 dims"),
    ("k shape", lambda x: x | {"k": torch.randn(B, T, H, K + 1)}, ValueError,
     r"k: expected shape \[B, T, H, K\] = \[2, 6, 3, 4\], got \[2, 6, 3, 5\]"),
    ("v batch", lambda x: x | {"v": torch.randn(B + 1, T, H, V)}, ValueError,
     r"v: expected shape \[B, T, H, V\] = \[2, 6, 3, 5\], got \[3, 6, 3, 5\]"),
    ("v rank", lambda x: x | {"v": torch.randn(B, T, H)}, ValueError, r"v: expected 4 dims"),
    ("k dtype", lambda x: x | {"k": x["k"].double()}, TypeError,
     r"k: expected dtype torch.float32 \(that of q\), got torch.float64"),
    ("q int", lambda x: x | {"q": x["q"].long()}, TypeError, r"q: expected a floating-point dtype, got torch.int64"),
    ("q list", lambda x: x | {"q": [1.0]}, TypeError, r"q: expected a torch.Tensor, got list"),
    ("v device", lambda x: x | {"v": x["v"].to("meta")}, ValueError, r"v: expected device cpu \(that of q\), got meta"),
    ("g device", lambda x: x | {"g": x["g"].to("meta")}, ValueError, r"g: expected device cpu"),
    ("g positive", lambda x: x | {"g": x["g"].abs() + 0.5}, ValueError,
     r"g: expected log-decay values <= 0, got a maximum of"),
    ("g shape", lambda x: x | {"g": torch.zeros(B, T)}, ValueError,
     r"g: expected shape \[H\] = \[3\] or \[B, T, H\] = \[2, 6, 3\] or \[B, T, H, K\] = \[2, 6, 3, 4\], got \[2, 6\]"),
    ("state shape", lambda x: x | {"initial_state": torch.zeros(B, H, V, K)}, ValueError,
     r"initial_state: expected shape \[N, H, K, V\] = \[2, 3, 4, 5\], got \[2, 3, 5, 4\]"),
    ("state dtype", lambda x: x | {"initial_state": torch.zeros(B, H, K, V, dtype=torch.int32)}, TypeError,
     r"initial_state: expected a floating-point dtype"),
    ("scale tensor", lambda x: x | {"scale": torch.tensor(1.0)}, TypeError, r"scale: expected a Python float or None"),
    ("chunk size", lambda x: x | {"chunk_size": 0}, ValueError, r"chunk_size: expected a positive int or None, got 0"),
    ("backend", lambda x: x | {"backend": "cuda-magic"}, ValueError,
     r"backend: expected one of \['chunk', 'naive', .*'auto'\] for family 'decay', got 'cuda-magic'"),
]

VARLEN_CASES = [
    ("B != 1", lambda x: base() | {"cu_seqlens": torch.tensor([0, 6])}, ValueError,
     r"cu_seqlens: expected packed input with B == 1, got B = 2"),
    ("not from 0", lambda x: x | {"cu_seqlens": torch.tensor([1, 6])}, ValueError,
     r"cu_seqlens: expected cu_seqlens\[0\] == 0, got 1"),
    ("not increasing", lambda x: x | {"cu_seqlens": torch.tensor([0, 4, 4, 6])}, ValueError,
     r"cu_seqlens: expected strictly increasing offsets, got \[0, 4, 4, 6\]"),
    ("last != T", lambda x: x | {"cu_seqlens": torch.tensor([0, 2, 5])}, ValueError,
     r"cu_seqlens: expected cu_seqlens\[-1\] == T = 6, got 5"),
    ("float", lambda x: x | {"cu_seqlens": torch.tensor([0.0, 6.0])}, TypeError,
     r"cu_seqlens: expected dtype torch.int32 or torch.int64, got torch.float32"),
    ("2-D", lambda x: x | {"cu_seqlens": torch.tensor([[0, 6]])}, ValueError, r"cu_seqlens: expected a 1-D tensor"),
    ("state rows", lambda x: x | {"cu_seqlens": torch.tensor([0, 2, 6]), "initial_state": torch.zeros(1, H, K, V)},
     ValueError, r"initial_state: expected shape \[N, H, K, V\] = \[2, 3, 4, 5\], got \[1, 3, 4, 5\]"),
]


@pytest.mark.parametrize("label, change, exc, pattern", CASES, ids=[c[0] for c in CASES])
def test_decay_validation(label, change, exc, pattern):
    with pytest.raises(exc, match=pattern):
        decay_scan(**change(base()))


@pytest.mark.parametrize("label, change, exc, pattern", VARLEN_CASES, ids=[c[0] for c in VARLEN_CASES])
def test_cu_seqlens_validation(label, change, exc, pattern):
    with pytest.raises(exc, match=pattern):
        decay_scan(**change(packed()))


def test_env_backend_override(monkeypatch):
    monkeypatch.setenv("LINSCAN_BACKEND", "nope")
    with pytest.raises(ValueError, match=re.escape("LINSCAN_BACKEND: expected one of")):
        decay_scan(**base())
    monkeypatch.setenv("LINSCAN_BACKEND", "naive")
    from linscan.ops import resolve
    assert resolve("decay", "auto", "cpu") == "naive"


def test_nan_does_not_raise():
    x = base()
    x["g"][0, 0, 0] = float("nan")
    x["q"][1, 2, 0, 0] = float("nan")
    o, _ = decay_scan(**x)
    assert torch.isnan(o).any()


def _delta(**change):
    x = dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
             beta=torch.rand(B, T, H), g=-torch.rand(B, T, H))
    return x | change


def _mlstm(**change):
    x = dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
             i=torch.randn(B, T, H), f=torch.randn(B, T, H))
    return x | change


FAMILY_CASES = [
    ("beta > 2", delta_scan, _delta(beta=torch.full((B, T, H), 2.5)), ValueError,
     r"beta: expected values in \[0, 2\], got range \[2.5, 2.5\]"),
    ("beta < 0", delta_scan, _delta(beta=torch.full((B, T, H), -0.5)), ValueError,
     r"beta: expected values in \[0, 2\], got range \[-0.5, -0.5\]"),
    ("beta layout", delta_scan, _delta(beta=torch.rand(B, T, 2, H)), ValueError,
     r"beta: expected shape \[B, T, H\] = \[2, 6, 3\], got \[2, 6, 2, 3\]"),
    ("R layout mix", delta_scan, _delta(k=torch.randn(B, T, 2, H, K)), ValueError,
     r"v: expected 5 dims \[B, T, R, H, V\], got 4 dims \[2, 6, 3, 5\]"),
    ("delta g diagonal", delta_scan, _delta(g=-torch.rand(B, T, H, K)), ValueError,
     r"g: expected shape \[B, T, H\] = \[2, 6, 3\], got \[2, 6, 3, 4\]"),
    ("delta g positive", delta_scan, _delta(g=torch.ones(B, T, H)), ValueError,
     r"g: expected log-decay values <= 0, got a maximum of 1"),
    ("input gate", mlstm_scan, _mlstm(input_gate="softmax"), ValueError,
     r"input_gate: expected one of \['exp', 'sigmoid'\], got 'softmax'"),
    ("mlstm state type", mlstm_scan, _mlstm(initial_state=torch.zeros(B, H, K, V)), TypeError,
     r"initial_state: expected a tuple \(C, n, m\) of tensors, got Tensor"),
    ("mlstm state arity", mlstm_scan, _mlstm(initial_state=(torch.zeros(B, H, K, V), torch.zeros(B, H, K))),
     ValueError, r"initial_state: expected a tuple \(C, n, m\) of 3 tensors, got 2 items"),
    ("mlstm f shape", mlstm_scan, _mlstm(f=torch.randn(B, 3, H)), ValueError,
     r"f: expected shape \[B, T, H\] = \[2, 6, 3\], got \[2, 3, 3\]"),
]


@pytest.mark.parametrize("label, op, inputs, exc, pattern", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_family_validation(label, op, inputs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        op(**inputs)
