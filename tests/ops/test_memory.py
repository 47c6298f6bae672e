"""Memory kept for the backward grows linearly in T (the chunk backends store no T x T tensor)."""

import pytest
import torch
import torch.nn.functional as F

from linscan.ops import decay_scan, delta_scan, mlstm_scan

B, H, K, V = 1, 2, 16, 16


def saved_mib(run, T: int) -> float:
    """MiB of distinct storages autograd saves for the backward of one call at length T."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, d, generator=gen, requires_grad=True) for d in (K, K, V))
    gate = torch.randn(B, T, H, generator=gen, requires_grad=True)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(q, k, v, gate)
    return sum(storages.values()) / 2**20


RUNS = {
    "decay": lambda q, k, v, x: decay_scan(q, k, v, F.logsigmoid(x + 3), backend="chunk"),
    "delta": lambda q, k, v, x: delta_scan(q, F.normalize(k, dim=-1), v, torch.sigmoid(x), F.logsigmoid(x + 3),
                                           backend="chunk"),
    "mlstm": lambda q, k, v, x: mlstm_scan(q, k, v, x, x + 3, backend="chunk"),
}


@pytest.mark.parametrize("family", RUNS)
def test_saved_memory_is_linear_in_T(family):
    small, large = saved_mib(RUNS[family], 1024), saved_mib(RUNS[family], 4096)
    print(f"{family}: saved for backward {small:.2f} MiB at T=1024, {large:.2f} MiB at T=4096")
    assert 3.5 <= large / small <= 4.5
