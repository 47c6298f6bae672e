"""What the GPU benchmark compares: each variant's inputs, linscan's call and its peer's call.

    variant        linscan op (backend="triton")         peer (timing only; optional)
    decay_scalar   decay_scan, g [B, T, H]              fla.ops.simple_gla.chunk_simple_gla(q, k, v, g=g)
    decay_diag     decay_scan, g [B, T, H, K]           fla.ops.gla.chunk_gla(q, k, v, g)
    gated_delta    delta_scan, k L2-normalised,         fla.ops.gated_delta_rule.chunk_gated_delta_rule(
                   beta = sigmoid, g = logsigmoid           q, k, v, g, beta)
    delta_product  delta_scan, R = 2: k [B, T, 2, H, K] fla.ops.gated_delta_product.chunk_gated_delta_product(
                                                            q, k, v, g, beta, num_householder=2)
    mlstm_exp      mlstm_scan, exp input gate           mlstm_kernels.torch.chunkwise.triton_xl_chunk.
                                                            mlstm_chunkwise__xl_chunk(q, k, v, i, f)
    sdpa           torch SDPA, causal (the common reference of every row; no peer)

Layouts. linscan and fla take ``[B, T, H, *]``. fla's gated delta product (0.6,
``fla/ops/gated_delta_product/chunk.py``) takes k, v ``[B, T*R, H, *]`` and beta
``[B, T*R, H]`` with the R rows of a token adjacent (row ``t*R + j``), which is
exactly linscan's ``[B, T, R, H, *]`` reshaped; q, g and o stay per token.
mlstm_kernels takes ``[B, H, T, *]`` (gates ``[B, H, T]``) and returns h ``[B, H, T, V]``.
Conversions happen once, outside the timed region; the peers' tensors are leaves of
their own, so their gradients are those of their layout.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from linscan import ops as linscan_ops
from linscan.ops.checks import Dims  # noqa: F401  (benchmark shapes; R stays 1)

DATA = ("q", "k", "v")      # cast to the benchmark dtype; gates (g, beta, i, f) stay float32
R_PRODUCT = 2


@dataclass(frozen=True)
class Peer:
    """A peer kernel: where it lives, how linscan-layout inputs become its keyword tensors."""

    label: str
    module: str
    name: str
    convert: Callable[[dict], dict] = lambda x: x
    heads_first: bool = False                 # its output (and output gradient) is [B, H, T, V]
    options: dict = field(default_factory=dict)

    def load(self) -> tuple[Callable | None, str]:
        """(the call ``fn(**tensors) -> o``, "ok") or (None, why not)."""
        package = self.module.split(".")[0]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn = getattr(importlib.import_module(self.module), self.name)
        except ModuleNotFoundError as e:
            return None, "not installed" if e.name == package else f"import failed: {e}"
        except Exception as e:  # a broken peer must not stop the benchmark
            return None, f"import failed: {type(e).__name__}: {e}"

        def call(**tensors):
            out = fn(**tensors, **self.options)
            return out[0] if isinstance(out, tuple) else out

        return call, "ok"

    def to_output_layout(self, x: torch.Tensor) -> torch.Tensor:
        """A ``[B, T, H, V]`` tensor in the peer's output layout (and back: the map is an involution)."""
        return x.transpose(1, 2).contiguous() if self.heads_first else x


@dataclass(frozen=True)
class Variant:
    name: str
    family: str                               # "decay" | "delta" | "mlstm" | "sdpa"
    make: Callable[[Dims, Callable], dict]    # (dims, randn) -> float32 tensors in linscan's layout
    peer: Peer | None = None
    R: int = 1

    def call(self, backend: str) -> Callable[..., torch.Tensor]:
        """linscan's op with ``backend`` (SDPA for the reference variant): ``fn(**inputs) -> o``."""
        if self.family == "sdpa":
            return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        op = {"decay": linscan_ops.decay_scan, "delta": linscan_ops.delta_scan,
              "mlstm": linscan_ops.mlstm_scan}[self.family]
        return lambda **inputs: op(**inputs, backend=backend)[0]


# ---------------------------------------------------------------- inputs (float32, linscan layout)

def _qkv(d: Dims, randn, R: int | None = None) -> dict:
    rows = (d.B, d.T) if R is None else (d.B, d.T, R)
    return {"q": randn(d.B, d.T, d.H, d.K), "k": randn(*rows, d.H, d.K), "v": randn(*rows, d.H, d.V)}


def _decay_scalar(d: Dims, randn) -> dict:
    return {**_qkv(d, randn), "g": F.logsigmoid(randn(d.B, d.T, d.H))}


def _decay_diag(d: Dims, randn) -> dict:
    return {**_qkv(d, randn), "g": F.logsigmoid(randn(d.B, d.T, d.H, d.K))}


def _delta(d: Dims, randn, R: int | None = None) -> dict:
    x = _qkv(d, randn, R)
    x["k"] = F.normalize(x["k"], dim=-1)
    rows = (d.B, d.T) if R is None else (d.B, d.T, R)
    return {**x, "beta": torch.sigmoid(randn(*rows, d.H)), "g": F.logsigmoid(randn(d.B, d.T, d.H))}


def _mlstm(d: Dims, randn) -> dict:
    return {**_qkv(d, randn), "i": randn(d.B, d.T, d.H), "f": randn(d.B, d.T, d.H) + 3.0}


def _sdpa(d: Dims, randn) -> dict:
    # heads first ([B, H, T, K]), SDPA's layout; the values are as random as anyone's
    return {"q": randn(d.B, d.H, d.T, d.K), "k": randn(d.B, d.H, d.T, d.K), "v": randn(d.B, d.H, d.T, d.V)}


def _rows_flat(x: dict) -> dict:
    """linscan DeltaProduct layout -> fla's: k, v [B, T, R, H, *] -> [B, T*R, H, *]; beta likewise."""
    B, T, R = x["k"].shape[:3]
    return {**x, "k": x["k"].reshape(B, T * R, *x["k"].shape[3:]),
            "v": x["v"].reshape(B, T * R, *x["v"].shape[3:]), "beta": x["beta"].reshape(B, T * R, -1)}


def _heads_first(x: dict) -> dict:
    return {name: t.transpose(1, 2).contiguous() for name, t in x.items()}


VARIANTS = {
    "decay_scalar": Variant("decay_scalar", "decay", _decay_scalar,
                            Peer("fla chunk_simple_gla", "fla.ops.simple_gla", "chunk_simple_gla")),
    "decay_diag": Variant("decay_diag", "decay", _decay_diag, Peer("fla chunk_gla", "fla.ops.gla", "chunk_gla")),
    "gated_delta": Variant("gated_delta", "delta", _delta,
                           Peer("fla chunk_gated_delta_rule", "fla.ops.gated_delta_rule",
                                "chunk_gated_delta_rule")),
    "delta_product": Variant("delta_product", "delta", lambda d, randn: _delta(d, randn, R_PRODUCT),
                             Peer("fla chunk_gated_delta_product", "fla.ops.gated_delta_product",
                                  "chunk_gated_delta_product", convert=_rows_flat,
                                  options={"num_householder": R_PRODUCT}), R=R_PRODUCT),
    "mlstm_exp": Variant("mlstm_exp", "mlstm", _mlstm,
                         Peer("mlstm_kernels triton_xl_chunk", "mlstm_kernels.torch.chunkwise.triton_xl_chunk",
                              "mlstm_chunkwise__xl_chunk", convert=_heads_first, heads_first=True)),
}
SDPA_VARIANT = Variant("sdpa", "sdpa", _sdpa)


def make_inputs(variant: Variant, dims: Dims, *, device, dtype: torch.dtype, seed: int = 0) -> dict:
    """The variant's tensors on ``device``: q, k, v in ``dtype``, gates float32 (or float64 when
    ``dtype`` is float64). Same seed, same values, whatever the device's generator."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    gate_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return {name: t.to(dtype if name in DATA else gate_dtype) for name, t in variant.make(dims, randn).items()}


def select(names: list[str] | None) -> list[Variant]:
    """The variants named (all when ``names`` is None or empty), in the table's order."""
    if not names:
        return list(VARIANTS.values())
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"--only: expected names from {sorted(VARIANTS)}, got {unknown}")
    return [VARIANTS[n] for n in VARIANTS if n in names]
