"""Suite-wide setup: Triton kernels run under the interpreter where there is no GPU;
tests marked ``gpu`` skip cleanly without CUDA."""

import os

import pytest
import torch

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
