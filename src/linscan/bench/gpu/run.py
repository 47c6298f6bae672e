"""The measuring half of the GPU benchmark: settings, timers, ceilings, the timed rows.

Imports Triton (``triton.testing.do_bench``) only inside :func:`make_timer`, so that
:mod:`linscan.bench.gpu.cli` can set ``TRITON_INTERPRET`` before anything imports it.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .gate import describe, gate_variant
from .metrics import io_bytes, rates, rel_err, scan_flops, tensor_bytes
from .. import timing
from .variants import Dims, Variant, make_inputs

Timer = Callable[[Callable[[], object]], float]      # fn -> milliseconds


@dataclass(frozen=True)
class Setting:
    """Shapes and timing of one run (the GPU protocol of BENCH.md, or the CPU smoke)."""

    device: str
    dtype: torch.dtype
    H: int
    K: int
    V: int
    lengths: tuple[int, ...]
    tokens: int                       # B = tokens // T
    gate: Dims                        # the correctness gate's shape
    sdpa_from_T: int                  # bar: faster than SDPA from this T on
    memory_T: int                     # bar: peak memory below SDPA's at this T
    matmul_n: int                     # ceiling: n x n x n matmul
    copy_bytes: int                   # ceiling: device-to-device copy of this many bytes
    warmup_ms: float = 25.0           # do_bench
    rep_ms: float = 100.0
    repeats: int = 1                  # smoke: perf_counter calls per median
    budget_s: float = 420.0           # rows not started by then are skipped
    peers: bool = True
    smoke: bool = False
    chunk: int = 64                   # C of the FLOP estimates

    def dims(self, T: int) -> Dims:
        return Dims(max(1, self.tokens // T), T, self.H, self.K, self.V)


GPU = Setting("cuda", torch.bfloat16, H=16, K=128, V=128, lengths=(2048, 8192, 32768), tokens=65536,
              gate=Dims(2, 1024, 4, 128, 128), sdpa_from_T=8192, memory_T=32768, matmul_n=8192,
              copy_bytes=1 << 30)
SMOKE = Setting("cpu", torch.bfloat16, H=2, K=16, V=16, lengths=(32, 64), tokens=128,
                gate=Dims(1, 32, 2, 16, 16), sdpa_from_T=64, memory_T=64, matmul_n=128,
                copy_bytes=1 << 20, repeats=1, budget_s=600.0, peers=False, smoke=True)


def make_timer(s: Setting) -> Timer:
    """``triton.testing.do_bench`` median (ms) on a GPU run; the median of perf_counter calls in the smoke."""
    if not s.smoke:
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=s.warmup_ms, rep=s.rep_ms, return_mode="median")

    def perf_counter_ms(fn) -> float:
        times = []
        for _ in range(s.repeats):
            _sync(s.device)
            start = time.perf_counter()
            fn()
            _sync(s.device)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    return perf_counter_ms


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_bytes(fn, device: str) -> int | None:
    """Peak CUDA bytes allocated during ``fn`` above those allocated before it (None off CUDA)."""
    return timing.cuda_peak_bytes(fn) if device == "cuda" else None


def measure_ceilings(s: Setting, timer: Timer) -> dict:
    """bf16 (float32 in the CPU smoke) n^3 matmul TFLOP/s and copy GB/s (bytes read + written)."""
    out = {"matmul_n": s.matmul_n, "copy_bytes": s.copy_bytes, "matmul_tflops": None, "copy_gbs": None,
           "status": "ok"}
    dtype = s.dtype if s.device == "cuda" else torch.float32     # CPU bf16 matmul is no ceiling
    try:
        a = torch.randn(s.matmul_n, s.matmul_n, device=s.device).to(dtype)   # random data: zeros run faster
        b = torch.randn(s.matmul_n, s.matmul_n, device=s.device).to(dtype)
        out["matmul_tflops"] = 2 * s.matmul_n ** 3 / (timer(lambda: a @ b) * 1e-3) / 1e12
        del a, b
        src = torch.randn(s.copy_bytes // 2, device=s.device).to(torch.bfloat16)
        dst = torch.empty_like(src)
        out["copy_gbs"] = 2 * s.copy_bytes / (timer(lambda: dst.copy_(src)) * 1e-3) / 1e9
        del src, dst
    except Exception as e:
        out["status"] = describe(e)
    _free(s.device)
    return out


class Bench:
    """Runs the gate and the timed rows; progress lines with elapsed time on stderr."""

    def __init__(self, s: Setting, timer: Timer, ceilings: dict, log=None):
        self.s, self.timer, self.ceilings = s, timer, ceilings
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.start = time.perf_counter()
        self.peers: dict[str, tuple[Callable | None, str]] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, msg: str) -> None:
        self.log(f"[gpu-bench {self.elapsed():7.1f}s] {msg}")

    def peer(self, variant: Variant) -> tuple[Callable | None, str]:
        """The variant's peer call and status, imported once ("no peers (smoke)" in the smoke run)."""
        if variant.peer is None:
            return None, "no peer"
        if not self.s.peers:
            return None, "no peers (smoke)" if self.s.smoke else "no peers"
        if variant.name not in self.peers:
            self.peers[variant.name] = variant.peer.load()
        return self.peers[variant.name]

    # ------------------------------------------------------------ gate

    def gate(self, variant: Variant) -> dict:
        self.say(f"gate {variant.name} at {self.s.gate}")
        try:
            result = gate_variant(variant, self.s.gate, device=self.s.device, dtype=self.s.dtype)
        except Exception as e:  # outside the guarded calls (making the inputs, say)
            result = {"variant": variant.name, "shape": self.s.gate.__dict__, "status": describe(e),
                      "errors": {}, "errors_reference_low": {}, "failing": [], "seconds": None}
        worst = max(result["errors"].items(), key=lambda kv: kv[1], default=("-", float("nan")))
        self.say(f"gate {variant.name}: {result['status']} (worst {worst[0]} {worst[1]:.2e}, "
                 f"{result['seconds'] or 0:.1f}s)")
        _free(self.s.device)
        return result

    # ------------------------------------------------------------ timed rows

    def row(self, variant: Variant, T: int, gate_status: str) -> dict:
        """:meth:`row_or_raise`; a failure outside the measurements (making the inputs, say) becomes
        the status of both."""
        try:
            return self.row_or_raise(variant, T, gate_status)
        except Exception as e:
            self.say(f"{variant.name} T={T}: {describe(e)}")
            failed = {"status": describe(e), "fwd_ms": None, "fwdbwd_ms": None, "peak_bytes": None}
            _free(self.s.device)
            return {"variant": variant.name, "T": T, "B": self.s.dims(T).B, "peer_o_diff": None,
                    "ours": {"impl": "linscan triton", **failed},
                    "peer": None if variant.peer is None else {"impl": variant.peer.label, **failed}}

    def row_or_raise(self, variant: Variant, T: int, gate_status: str) -> dict:
        """One table row: linscan (or SDPA) and the peer at length T, fwd and fwd+bwd; and the relative
        L2 difference of the peer's output from linscan's (both bf16: a few 1e-3 when the two compute
        the same function, order 1 when a layout or a convention differs)."""
        dims = self.s.dims(T)
        row = {"variant": variant.name, "T": T, "B": dims.B, "ours": None, "peer": None, "peer_o_diff": None}
        outputs: dict[str, torch.Tensor] = {}
        inputs = make_inputs(variant, dims, device=self.s.device, dtype=self.s.dtype)
        out_shape = (dims.B, dims.H, T, dims.V) if variant.family == "sdpa" else (dims.B, T, dims.H, dims.V)
        gen = torch.Generator(device=self.s.device).manual_seed(1)
        d_out = torch.randn(*out_shape, generator=gen, device=self.s.device).to(self.s.dtype)
        ours_label = "torch sdpa (causal)" if variant.family == "sdpa" else "linscan triton"
        status = "ok" if gate_status in ("PASS", "reference") else f"not timed: gate {gate_status}"
        row["ours"] = self.measure(variant, ours_label, variant.call("triton"), inputs, d_out, T, status,
                                   outputs)
        if variant.peer is not None:
            call, status = self.peer(variant)
            converted = variant.peer.convert(inputs) if call is not None else {}
            row["peer"] = self.measure(variant, variant.peer.label, call, converted,
                                       variant.peer.to_output_layout(d_out), T, status, outputs)
            if len(outputs) == 2:
                try:
                    row["peer_o_diff"] = rel_err(variant.peer.to_output_layout(outputs[variant.peer.label]),
                                                 outputs[ours_label])
                except Exception as e:
                    self.say(f"{variant.name} T={T}: peer output not comparable: {describe(e)}")
        del inputs, d_out, outputs
        _free(self.s.device)
        return row

    def measure(self, variant: Variant, label: str, call, inputs: dict, d_out, T: int, status: str,
                outputs: dict | None = None) -> dict:
        """fwd (no_grad) and fwd+bwd medians in ms, peak memory of fwd+bwd, achieved rates, and the
        seconds of the first (compiling, autotuning) calls; the first forward's output goes to ``outputs``."""
        m = {"impl": label, "status": status, "fwd_ms": None, "fwdbwd_ms": None, "peak_bytes": None,
             "first_calls_s": None}
        if status == "ok" and self.elapsed() > self.s.budget_s:
            m["status"] = f"skipped (time budget {self.s.budget_s:g}s)"
        if m["status"] != "ok":
            self.say(f"{variant.name} T={T} {label}: {m['status']}")
            return m
        leaves = {name: x.detach().clone().requires_grad_(True) for name, x in inputs.items()}

        def forward():
            with torch.no_grad():
                return call(**leaves)

        def forward_backward():  # allow_unused: a peer may leave an input out of its graph
            return torch.autograd.grad(call(**leaves), list(leaves.values()), d_out, allow_unused=True)

        try:
            first = time.perf_counter()
            o = forward()                               # compile / autotune outside the timing
            _sync(self.s.device)
            first = time.perf_counter() - first
            if outputs is not None:
                outputs[label] = o
            m["fwd_ms"] = self.timer(forward)
            first -= time.perf_counter()
            forward_backward()
            _sync(self.s.device)
            m["first_calls_s"] = first + time.perf_counter()
            m["peak_bytes"] = peak_bytes(forward_backward, self.s.device)
            m["fwdbwd_ms"] = self.timer(forward_backward)
        except Exception as e:
            m["status"] = describe(e)
        self.add_rates(m, variant, inputs, d_out, T)
        self.say(f"{variant.name} T={T} {label}: fwd {_ms(m['fwd_ms'])} fwd+bwd {_ms(m['fwdbwd_ms'])} "
                 f"peak {_mib(m['peak_bytes'])} {'' if m['status'] == 'ok' else m['status']}")
        del leaves
        return m

    def add_rates(self, m: dict, variant: Variant, inputs: dict, d_out, T: int) -> None:
        d = self.s.dims(T)
        kind = variant.family
        chunk = self.s.chunk
        in_bytes, out_bytes = tensor_bytes(inputs.values()), tensor_bytes([d_out])
        for mode, key in (("fwd", "fwd_ms"), ("fwd+bwd", "fwdbwd_ms")):
            flops = scan_flops(kind, B=d.B, T=T, H=d.H, K=d.K, V=d.V, chunk=chunk, R=variant.R, mode=mode)
            nbytes = io_bytes(in_bytes, out_bytes, mode)
            m[f"{key[:-3]}_flops"], m[f"{key[:-3]}_bytes"] = flops, nbytes
            m[f"{key[:-3]}_rates"] = rates(flops, nbytes, m[key], self.ceilings)


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}ms"


def _mib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2 ** 20:.0f}MiB"
