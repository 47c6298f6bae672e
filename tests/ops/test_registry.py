"""The backend registry: listing, resolving, auto selection."""

import pytest
import torch

from linscan import ops
from linscan.ops import registry


def test_available_lists_every_family_with_reference_and_chunk():
    avail = ops.available()
    for family in ("decay", "delta", "mlstm"):
        assert {"naive", "chunk"} <= set(avail.get(family, [])), avail


def test_auto_is_chunk_on_cpu(monkeypatch):
    monkeypatch.delenv("LINSCAN_BACKEND", raising=False)
    assert ops.resolve("decay", "auto", torch.device("cpu")) == "chunk"


def test_auto_prefers_triton_on_cuda_when_registered(monkeypatch):
    monkeypatch.delenv("LINSCAN_BACKEND", raising=False)
    monkeypatch.setitem(registry._BACKENDS, "toy", {"chunk": abs, "naive": abs, "triton": abs})
    assert ops.resolve("toy", "auto", "cuda") == "triton"
    assert ops.resolve("toy", "auto", "cpu") == "chunk"
    assert ops.get("toy", "naive") is abs


def test_unknown_family():
    with pytest.raises(ValueError, match=r"family: expected one of .*got 'nope'"):
        ops.get("nope")
