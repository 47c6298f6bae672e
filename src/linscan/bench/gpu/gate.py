"""The correctness gate of the GPU benchmark: no variant is timed before its Triton backend agrees.

For one variant at a moderate size (B=2, T=1024, H=4, K=V=128 on the GPU):

    1. inputs: q, k, v rounded to bf16 (gates float32), and a fixed bf16 output gradient;
       the reference sees exactly these values, upcast to float64
    2. reference: the ``chunk`` backend in float64 (itself checked against the token
       loop by the library's tests), output and the gradient of every input
    3. triton on the bf16 inputs; the ``chunk`` backend on the same bf16 inputs (the
       "reference run in bf16": it computes in float32 and rounds o and the gradients
       to bf16, as triton must)
    4. relative L2 error against 2. of o and of every gradient, for 3.'s two runs;
       PASS when every error(triton) <= 2 x error(chunk in bf16) + 1e-3
       (:func:`linscan.bench.gpu.metrics.gate_passes`)

(Whether each peer computes the same function is checked on the timed rows instead, where
its output is compared with linscan's at full size: see ``run.Bench.row``.)
"""

from __future__ import annotations

import time

import torch

from .metrics import gate_verdict, rel_err
from .variants import Dims, Variant, make_inputs

GATE_SEED = 7


def forward_backward(call, inputs: dict, d_out: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """o and the gradient of every input (names prefixed with "d") for the output gradient ``d_out``."""
    leaves = {name: x.detach().clone().requires_grad_(True) for name, x in inputs.items()}
    o = call(**leaves)
    grads = torch.autograd.grad(o, list(leaves.values()), d_out)
    return o.detach(), {f"d{name}": g for name, g in zip(leaves, grads)}


def errors_against(o, grads: dict, ref_o, ref_grads: dict) -> dict[str, float]:
    """Relative L2 errors of o and of every gradient against the reference's."""
    return {"o": rel_err(o, ref_o), **{name: rel_err(g, ref_grads[name]) for name, g in grads.items()}}


def describe(e: BaseException) -> str:
    """A one-line status for an exception (the first line of its message)."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "OOM"
    text = str(e).strip().splitlines()
    return f"error: {type(e).__name__}" + (f": {text[0][:200]}" if text else "")


def gate_variant(variant: Variant, dims: Dims, *, device, dtype: torch.dtype) -> dict:
    """Steps 1-4 of the module docstring for one variant; a dict for the JSON report."""
    start = time.perf_counter()
    result = {"variant": variant.name, "shape": dims.__dict__, "status": None, "errors": {},
              "errors_reference_low": {}, "failing": []}
    low = make_inputs(variant, dims, device=device, dtype=dtype, seed=GATE_SEED)         # 1.
    gen = torch.Generator(device=device).manual_seed(GATE_SEED + 1)
    d_out = torch.randn(dims.B, dims.T, dims.H, dims.V, generator=gen, device=device).to(dtype)
    exact = {name: x.double() for name, x in low.items()}
    try:
        ref_o, ref_grads = forward_backward(variant.call("chunk"), exact, d_out.double())  # 2.
        low_o, low_grads = forward_backward(variant.call("chunk"), low, d_out)           # 3.
    except Exception as e:
        result["status"] = f"reference failed: {describe(e)}"
        return _done(result, start)
    result["errors_reference_low"] = errors_against(low_o, low_grads, ref_o, ref_grads)
    try:
        o, grads = forward_backward(variant.call("triton"), low, d_out)
    except NotImplementedError as e:
        result["status"] = f"not available: {str(e).splitlines()[0] if str(e) else 'NotImplementedError'}"
        return _done(result, start)
    except Exception as e:
        result["status"] = describe(e)
        return _done(result, start)
    result["errors"] = errors_against(o, grads, ref_o, ref_grads)                         # 4.
    ok, result["failing"] = gate_verdict(result["errors"], result["errors_reference_low"])
    result["status"] = "PASS" if ok else "FAILED"
    return _done(result, start)


def _done(result: dict, start: float) -> dict:
    result["seconds"] = time.perf_counter() - start
    return result

