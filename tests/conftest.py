"""Suite-wide setup: Triton kernels run under the interpreter where there is no GPU;
tests marked ``gpu`` skip cleanly without CUDA."""

import os

# OpenMP threads that sleep while they wait: spinning ones make the suite several times slower on
# shared cores (read when torch is first imported, so before that; an explicit setting wins)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    # must precede the first ``import triton`` anywhere in the process
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
