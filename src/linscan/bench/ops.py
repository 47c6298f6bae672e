"""`linscan bench ops`: every scan family side by side with its peers (BENCH.md).

Per family, on the same data, forward and forward+backward:

    family  linscan              peer (optional, imported here only)
    decay   naive, chunk         fla naive_chunk_simple_gla        (scalar g [B, T, H])
    delta   naive, chunk         fla naive_chunk_gated_delta_rule  (L2-normalised k, sigmoid beta, g)
    mlstm   naive, chunk         mlstm_kernels native chunkwise    (exp input gate)
    attention                    torch SDPA, causal                (a common reference)

On a GPU (``--device cuda``) the peers are the Triton kernels instead
(fla ``chunk_*``, mlstm_kernels ``triton_xl_chunk``) and linscan runs its
``chunk`` backend and whatever ``auto`` resolves to; the token loop is not run.

Rows are measured in groups (one family, one T, one mode) whose members are
timed round-robin (see :mod:`linscan.bench.timing`). ``fwd`` runs under
``torch.no_grad()``; ``fwd+bwd`` is the forward plus ``torch.autograd.grad``
of the output against a fixed random output gradient, for every floating
input. Inputs are prepared outside the timed region, each implementation in
its own layout ([B, T, H, K] or [B, H, T, K]) from the same tensors. Peak
memory (fwd+bwd) is measured on the CPU in fresh child processes (the median of MEMORY_PROBES) per row
(``python -m linscan.bench.ops SPEC``), so that neither the allocator's
history nor an out-of-memory kill reaches the main run.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

import linscan
from linscan import ops as linscan_ops

from . import timing

FAMILIES = ("decay", "delta", "mlstm")
MODES = ("fwd", "fwd+bwd")
NAIVE_MAX_T = 4096            # the token loop takes minutes beyond this
MEMORY_PROBES = 3             # fresh processes per CPU memory figure, median reported (RSS growth varies +-20%)
PROBE_T = 64                  # tiny call: does an implementation run at all; memory-probe warm-up
BAR_T, BAR_T_LONG = 4096, 16384
PEER_BARS = {"decay": 0.7, "delta": 0.5, "mlstm": 0.8}   # chunk / peer, fwd+bwd at BAR_T
SPEEDUP_BAR = 20.0                                       # naive / chunk, fwd+bwd at BAR_T
SCALING_BAR = 4.5                                        # chunk at BAR_T_LONG / BAR_T


@dataclass(frozen=True)
class Setting:
    """Where and at what shapes the benchmark runs (BENCH.md "Standard shapes")."""

    device: str
    dtype: torch.dtype
    H: int
    K: int
    V: int
    T: tuple[int, ...]
    tokens: int | None = None       # GPU: B = tokens // T; CPU: B = 1

    def batch(self, T: int) -> int:
        return max(1, self.tokens // T) if self.tokens else 1


CPU = Setting("cpu", torch.float32, H=4, K=64, V=64, T=(1024, 4096, 16384))
CUDA = Setting("cuda", torch.bfloat16, H=16, K=128, V=128, T=(2048, 8192, 32768), tokens=65536)


@dataclass
class Impl:
    """One row group of the table: an implementation of a family's computation."""

    label: str
    role: str                                # "naive" | "chunk" | "auto" | "peer" | "reference"
    call: Callable[..., torch.Tensor] | None  # keyword tensors in its layout -> o
    heads_first: bool = False                # takes [B, H, T, *] instead of [B, T, H, *]
    status: str = "ok"                       # else why it has no numbers


@dataclass
class Report:
    meta: dict
    rows: list[dict] = field(default_factory=list)
    families: dict[str, str] = field(default_factory=dict)
    bars: list[dict] = field(default_factory=list)

    def as_json(self) -> dict:
        return {**self.meta, "families": self.families, "rows": self.rows, "bars": self.bars}


# ---------------------------------------------------------------- inputs

def make_inputs(family: str, B: int, T: int, s: Setting, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of one call in linscan's layout [B, T, H, *]; gates stay float32."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    x = {"q": randn(B, T, s.H, s.K), "k": randn(B, T, s.H, s.K), "v": randn(B, T, s.H, s.V)}
    gates: dict[str, torch.Tensor] = {}
    if family == "decay":
        gates["g"] = F.logsigmoid(randn(B, T, s.H))
    elif family == "delta":
        x["k"] = F.normalize(x["k"], dim=-1)
        gates["beta"] = torch.sigmoid(randn(B, T, s.H))
        gates["g"] = F.logsigmoid(randn(B, T, s.H))
    elif family == "mlstm":
        gates["i"] = randn(B, T, s.H)
        gates["f"] = randn(B, T, s.H) + 3.0      # forget-gate pre-activation, bias as in xLSTM
    x = {name: t.to(s.device, s.dtype) for name, t in x.items()}
    return {**x, **{name: t.to(s.device) for name, t in gates.items()}}


def family_inputs(family: str, T: int, s: Setting, B: int | None = None) -> tuple[dict, torch.Tensor]:
    """The inputs of ``family`` at length T and the output gradient of fwd+bwd (same data every time)."""
    inputs = make_inputs("decay" if family == "attention" else family, B or s.batch(T), T, s)
    if family == "attention":
        inputs = {n: inputs[n] for n in "qkv"}
    d_out = torch.randn(inputs["v"].shape, generator=torch.Generator().manual_seed(1))
    return inputs, d_out.to(s.device, s.dtype)


# ---------------------------------------------------------------- implementations

def _ours(family: str, backend: str) -> Callable[..., torch.Tensor]:
    op = {"decay": linscan_ops.decay_scan, "delta": linscan_ops.delta_scan,
          "mlstm": linscan_ops.mlstm_scan}[family]
    if family == "decay":
        return lambda q, k, v, g: op(q, k, v, g, backend=backend)[0]
    if family == "delta":
        return lambda q, k, v, beta, g: op(q, k, v, beta, g, backend=backend)[0]
    return lambda q, k, v, i, f: op(q, k, v, i, f, backend=backend)[0]


def _import(module: str, name: str):
    """(function, "ok") or (None, why not): "not installed" when the package itself is missing."""
    package = module.split(".")[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # fla warns that Triton has no GPU to run on
            return getattr(importlib.import_module(module), name), "ok"
    except ModuleNotFoundError as e:
        if e.name == package:
            return None, "not installed"
        return None, f"import failed: {e}"
    except Exception as e:  # a broken peer must not stop the benchmark
        return None, f"import failed: {type(e).__name__}: {e}"


def _peer(label: str, module: str, name: str, adapt: Callable, heads_first: bool = False) -> Impl:
    fn, status = _import(module, name)
    return Impl(label, "peer", None if fn is None else adapt(fn), heads_first, status)


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def implementations(family: str, s: Setting, *, peers: bool) -> list[Impl]:
    """The rows of one family: linscan's backends first, then the peers."""
    if family == "attention":
        return [Impl("torch sdpa (causal)", "reference", _sdpa, heads_first=True)]
    if s.device == "cpu":
        impls = [Impl("linscan naive", "naive", _ours(family, "naive")),
                 Impl("linscan chunk", "chunk", _ours(family, "chunk"))]
    else:
        impls = [Impl("linscan chunk", "chunk", _ours(family, "chunk"))]
        try:
            auto = linscan_ops.resolve(family, "auto", s.device)
        except ValueError:
            auto = "chunk"
        if auto != "chunk":
            impls.append(Impl(f"linscan {auto}", "auto", _ours(family, auto)))
    if peers:
        impls.append(_peer_for(family, s))
    return impls


def _peer_for(family: str, s: Setting) -> Impl:
    cpu = s.device == "cpu"
    if family == "decay":
        name = "naive_chunk_simple_gla" if cpu else "chunk_simple_gla"
        return _peer(f"fla {name}", "fla.ops.simple_gla.naive" if cpu else "fla.ops.simple_gla", name,
                     lambda fn: lambda q, k, v, g: fn(q=q, k=k, v=v, g=g)[0])
    if family == "delta":
        name = "naive_chunk_gated_delta_rule" if cpu else "chunk_gated_delta_rule"
        return _peer(f"fla {name}", "fla.ops.gated_delta_rule.naive" if cpu else "fla.ops.gated_delta_rule",
                     name, lambda fn: lambda q, k, v, beta, g: fn(q=q, k=k, v=v, g=g, beta=beta)[0])
    if cpu:  # the hand-written backward is the faster of mlstm_kernels' two native variants
        return _peer("mlstm_kernels native_custbw", "mlstm_kernels.torch.chunkwise.native",
                     "mlstm_chunkwise__native_custbw", lambda fn: fn, heads_first=True)
    return _peer("mlstm_kernels triton_xl_chunk", "mlstm_kernels.torch.chunkwise.triton_xl_chunk",
                 "mlstm_chunkwise__xl_chunk", lambda fn: fn, heads_first=True)


# ---------------------------------------------------------------- one measurement group

def _layout(x: torch.Tensor, heads_first: bool) -> torch.Tensor:
    # [B, T, H, *] -> [B, H, T, *]
    return x.transpose(1, 2).contiguous() if heads_first else x


def _callable(impl: Impl, inputs: dict, d_out: torch.Tensor, mode: str) -> Callable[[], torch.Tensor]:
    args = {n: _layout(x, impl.heads_first).detach().clone().requires_grad_(True) for n, x in inputs.items()}
    leaves = list(args.values())
    d_out = _layout(d_out, impl.heads_first)

    def forward():
        with torch.no_grad():
            return impl.call(**args)

    def forward_backward():
        o = impl.call(**args)
        return torch.autograd.grad(o, leaves, d_out)

    return forward if mode == "fwd" else forward_backward


def _error(e: BaseException) -> str:
    return f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def probe(impl: Impl, family: str, s: Setting) -> str:
    """Call ``impl`` once at a tiny size: "ok" or why it cannot run."""
    if impl.status != "ok":
        return impl.status
    inputs, _ = family_inputs(family, PROBE_T, s, B=1)
    try:
        with torch.no_grad():
            impl.call(**{n: _layout(x, impl.heads_first) for n, x in inputs.items()})
    except NotImplementedError as e:
        return f"not available: {e}"
    except Exception as e:
        return f"not available: {_error(e)[len('error: '):]}"
    return "ok"


class Runner:
    """Measures groups and collects rows; reports progress on stderr."""

    def __init__(self, s: Setting, *, repeats: int, naive: bool, memory: bool = True, slow_s: float = 5.0,
                 log=None):
        self.s, self.repeats, self.naive, self.memory, self.slow_s = s, repeats, naive, memory, slow_s
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.start = time.perf_counter()
        self.timer = timing.cuda_timer() if s.device == "cuda" else timing.clock

    def say(self, msg: str) -> None:
        self.log(f"[bench {time.perf_counter() - self.start:7.1f}s] {msg}")

    def skip_reason(self, impl: Impl, T: int) -> str | None:
        if impl.role != "naive":
            return None
        if not self.naive:
            return "skipped (--no-naive)"
        if T > NAIVE_MAX_T:
            return f"skipped (token loop at T > {NAIVE_MAX_T})"
        return None

    def group(self, family: str, impls: list[Impl], T: int, mode: str, inputs: dict,
              d_out: torch.Tensor) -> list[dict]:
        """Rows of ``impls`` at one T and mode, timed round-robin."""
        rows = {impl.label: {"family": family, "impl": impl.label, "role": impl.role, "B": self.s.batch(T),
                             "T": T, "mode": mode, "status": self.skip_reason(impl, T) or impl.status,
                             "time_s": None, "times_s": [], "peak_bytes": None, "memory_status": None,
                             "rel_err": None}
                for impl in impls}
        calls, outputs, warm = {}, {}, {}
        for impl in impls:
            row = rows[impl.label]
            if row["status"] != "ok":
                continue
            fn = _callable(impl, inputs, d_out, mode)
            self.say(f"{family} T={T} {mode}: warm-up {impl.label}")
            try:
                warm[impl.label], o = self.first_call(impl, fn, mode)
            except Exception as e:
                row["status"] = _error(e)
                self.say(f"{family} T={T} {mode}: {impl.label} failed: {row['status']}")
                continue
            calls[impl.label] = fn
            if o is not None:
                outputs[impl.label] = o
        times = timing.time_round_robin(calls, repeats=self.repeats, warm=warm, slow_s=self.slow_s,
                                        timer=self.timer)
        for label, ts in times.items():
            rows[label].update(times_s=ts, time_s=timing.median(ts))
            self.say(f"{family} T={T} {mode}: {label} {rows[label]['time_s']:.4g} s (median of {len(ts)})")
        ref = outputs.get("linscan chunk")
        for label, o in outputs.items():
            rows[label]["rel_err"] = None if ref is None else _rel_err(o, ref)
        if self.memory and mode == "fwd+bwd":
            self.measure_memory(family, T, [impl for impl in impls if impl.label in calls], calls, rows)
        return list(rows.values())

    def measure_memory(self, family: str, T: int, impls: list[Impl], calls: dict, rows: dict) -> None:
        for impl in impls:
            if impl.role != "naive":  # nobody asks how much memory the token loop takes
                self.say(f"{family} T={T} fwd+bwd: peak memory of {impl.label}")
                rows[impl.label]["peak_bytes"], rows[impl.label]["memory_status"] = \
                    self.peak(family, impl, T, calls[impl.label])

    def peak(self, family: str, impl: Impl, T: int, fn) -> tuple[int | None, str]:
        """Peak bytes of one fwd+bwd call and "ok", or None and why not."""
        if self.s.device == "cuda":
            return timing.cuda_peak_bytes(fn), "ok"
        spec = {"family": family, "label": impl.label, "peer": impl.role == "peer", "T": T,
                "threads": torch.get_num_threads(),
                "setting": {"H": self.s.H, "K": self.s.K, "V": self.s.V}}
        peaks = []
        for _ in range(MEMORY_PROBES):
            proc = subprocess.run([sys.executable, "-m", "linscan.bench.ops", json.dumps(spec)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                why = (f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0 else
                       (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1])
                return None, f"memory probe failed: {why}"
            peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]
            if peak is None:
                return None, "no /proc/self/clear_refs: peak not measured"
            peaks.append(peak)
        return int(statistics.median(peaks)), "ok"

    def first_call(self, impl: Impl, fn, mode: str) -> tuple[float, torch.Tensor | None]:
        """The warm-up call: its time, and (fwd) its output in [B, T, H, V] for the agreement check."""
        kept = {}

        def call():
            kept["result"] = fn()

        seconds = self.timer(call)
        o = kept["result"] if mode == "fwd" else None
        return seconds, (o.transpose(1, 2) if o is not None and impl.heads_first else o)


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


# ---------------------------------------------------------------- the whole run

def run(families: list[str], *, setting: Setting = CPU, T: list[int] | None = None, threads: int = 2,
        repeats: int = 3, peers: bool = True, naive: bool = True, memory: bool = True,
        env: dict | None = None, log=None) -> Report:
    """Benchmark ``families`` (and SDPA when ``peers``); returns the rows, bars and metadata.

    ``memory=False`` skips the peak-memory probes (a child process each on the CPU).
    """
    s = setting if T is None else Setting(**{**setting.__dict__, "T": tuple(T)})
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runner = Runner(s, repeats=repeats, naive=naive, memory=memory, log=log)
        return _run(families, s, runner, peers=peers, env=env)
    finally:
        torch.set_num_threads(previous)


def _run(families, s: Setting, runner: "Runner", *, peers, env) -> Report:
    report = Report(meta=_meta(s, runner, peers=peers, env=env))
    for family in [*families, *(["attention"] if peers else [])]:
        impls = implementations(family, s, peers=peers)
        for impl in impls:
            impl.status = probe(impl, family, s)
        ours = next(impl for impl in impls if impl.role in ("chunk", "reference"))
        report.families[family] = ours.status
        if ours.status != "ok":
            runner.say(f"{family}: {ours.status}")
            continue
        for T in s.T:
            inputs, d_out = family_inputs(family, T, s)
            for mode in MODES:
                report.rows += runner.group(family, impls, T, mode, inputs, d_out)
    if s.device == "cpu":  # the bars are the CPU protocol's
        report.bars = bars(report)
    runner.say("done")
    return report


def _meta(s: Setting, runner: Runner, *, peers: bool, env: dict | None) -> dict:
    return {
        "benchmark": "ops", "linscan_version": linscan.__version__, "torch_version": torch.__version__,
        "device": s.device, "dtype": str(s.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "H": s.H, "K": s.K, "V": s.V, "T": list(s.T), "B": {str(t): s.batch(t) for t in s.T},
        "repeats": runner.repeats, "peers": peers, "naive": runner.naive,
        "timing": "median of repeats after one warm-up call, group members timed round-robin; "
                  f"calls slower than {runner.slow_s:g} s are timed once; fwd under no_grad, "
                  "fwd+bwd = forward + autograd.grad for all inputs",
        "memory": "fwd+bwd only, naive not measured; " + (
            "torch.cuda.max_memory_allocated above the allocation before the call" if s.device == "cuda" else
            "growth of the peak resident set (VmHWM) during one call in a fresh process, after a "
            f"warm-up call at T={PROBE_T} (so not meaningful near that T); inputs excluded; "
            "live tensors plus allocator slack"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "not set"),
        "env": env or {},
    }


# ---------------------------------------------------------------- bars

def _lookup(rows: list[dict], family: str, role: str, T: int, key: str = "time_s"):
    for row in rows:
        if row["family"] == family and row["role"] == role and row["T"] == T and row["mode"] == "fwd+bwd":
            return row, row[key]
    return None, None


def _ratio(rows, family, num: tuple, den: tuple) -> tuple[float | None, str]:
    """num / den, each (role, T, key); or None and why not."""
    parts = []
    for role, T, key in (num, den):
        row, value = _lookup(rows, family, role, T, key)
        if row is None:
            return None, f"no {role} row at T={T}"
        if value is None:
            return None, f"{row['impl']} T={T}: {row['status'] if row['status'] != 'ok' else 'not measured'}"
        parts.append(value)
    return (parts[0] / parts[1] if parts[1] else None), ""


def bars(report: Report) -> list[dict]:
    """The issue's acceptance bars (fwd+bwd), PASS / FAIL / n/a each."""
    out = []
    for family, status in report.families.items():
        if family == "attention":
            continue
        rows = report.rows
        peer = next((r["impl"] for r in rows if r["family"] == family and r["role"] == "peer"), "peer")
        checks = [
            (f"chunk speed-up over naive, T={BAR_T}", ("naive", BAR_T, "time_s"), ("chunk", BAR_T, "time_s"),
             ">=", SPEEDUP_BAR),
            (f"chunk / {peer}, T={BAR_T}", ("chunk", BAR_T, "time_s"), ("peer", BAR_T, "time_s"),
             "<=", PEER_BARS[family]),
            (f"chunk time T={BAR_T_LONG} / T={BAR_T}", ("chunk", BAR_T_LONG, "time_s"),
             ("chunk", BAR_T, "time_s"), "<=", SCALING_BAR),
            (f"chunk peak memory T={BAR_T_LONG} / T={BAR_T}", ("chunk", BAR_T_LONG, "peak_bytes"),
             ("chunk", BAR_T, "peak_bytes"), "<=", SCALING_BAR),
        ]
        for name, num, den, op, threshold in checks:
            if status != "ok":
                value, why = None, status
            else:
                value, why = _ratio(rows, family, num, den)
            ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
            out.append({"family": family, "bar": name, "value": value, "op": op, "threshold": threshold,
                        "status": "n/a" if value is None else ("PASS" if ok else "FAIL"), "why": why})
    return out


# ---------------------------------------------------------------- table

def _cell(row: dict | None, key: str, scale: float = 1.0) -> str:
    if row is None:
        return "-"
    if row["status"] != "ok":
        return row["status"].split(" (")[0].split(":")[0]
    value = row[key]
    return "-" if value is None else f"{value * scale:.4g}"


def format_table(report: Report) -> str:
    """The report as text: a header, one block per family, then the bars."""
    m = report.as_json()
    lines = [f"linscan bench ops: {m['device']} {m['dtype']}, H={m['H']} K={m['K']} V={m['V']}, "
             f"B={'/'.join(str(m['B'][str(t)]) for t in m['T'])}, {m['threads']} threads, "
             f"OMP_WAIT_POLICY={m['omp_wait_policy']}, median of {m['repeats']} "
             "(seconds; MiB: peak memory growth during the call)"]
    width = max([len(r["impl"]) for r in report.rows] + [28])
    for family, status in report.families.items():
        lines.append("")
        if status != "ok":
            lines.append(f"{family}: {status}")
            continue
        lines.append(f"{family:<{width}}  {'':<12}" + "".join(f"{'T=' + str(t):>12}" for t in m["T"]))
        rows = [r for r in report.rows if r["family"] == family]
        notes = []
        for label in dict.fromkeys(r["impl"] for r in rows):
            block, more = _impl_lines(label, [r for r in rows if r["impl"] == label], m["T"], width)
            lines += block
            notes += more
        lines += [f"  note: {n}" for n in notes]
    if report.bars:
        lines += ["", "bars (fwd+bwd)"]
        for b in report.bars:
            value = "n/a" if b["value"] is None else f"{b['value']:.3g}"
            why = f"  ({b['why']})" if b["why"] else ""
            lines.append(f"  {b['family']:<6} {b['bar']:<{width + 24}} {value:>8}  {b['op']} "
                         f"{b['threshold']:<5g} {b['status']}{why}")
    return "\n".join(lines)


def _impl_lines(label: str, rows: list[dict], Ts: list[int], width: int) -> tuple[list[str], list[str]]:
    """Table lines of one implementation (one per metric, one column per T) and its notes."""
    first = rows[0]
    if all(r["status"] == first["status"] != "ok" for r in rows) and not first["status"].startswith("skipped"):
        return [f"{label:<{width}}  {first['status']}"], []
    by_key = {(r["T"], r["mode"]): r for r in rows}
    metrics = [("fwd s", "fwd", "time_s", 1.0), ("fwd+bwd s", "fwd+bwd", "time_s", 1.0)]
    if first["role"] != "naive":
        metrics.append(("fwd+bwd MiB", "fwd+bwd", "peak_bytes", 2.0 ** -20))
    lines = []
    for i, (name, mode, key, scale) in enumerate(metrics):
        cells = "".join(f"{_cell(by_key.get((t, mode)), key, scale):>12}" for t in Ts)
        lines.append(f"{label if i == 0 else '':<{width}}  {name:<12}{cells}")
    notes = sorted({f"{label}: {r['status']}" for r in rows
                    if r["status"] not in ("ok", "skipped (--no-naive)")})
    notes += [f"{label} T={r['T']}: {r['memory_status']}" for r in rows
              if r.get("memory_status") not in (None, "ok")]
    errs = [f"T={r['T']} {r['rel_err']:.1e}" for r in rows if r["mode"] == "fwd" and r["rel_err"] is not None]
    if errs and first["role"] != "chunk":
        notes.append(f"{label}: output vs linscan chunk (rel. L2) " + ", ".join(errs))
    return lines, notes


# ---------------------------------------------------------------- memory probe (child process)

def _memory_child(spec: dict) -> dict:
    """One fwd+bwd call of one implementation in this fresh process: its resident-set growth."""
    s = Setting("cpu", torch.float32, T=(spec["T"],), **spec["setting"])
    torch.set_num_threads(spec["threads"])
    family, T = spec["family"], spec["T"]
    impl = next(i for i in implementations(family, s, peers=spec["peer"]) if i.label == spec["label"])
    _callable(impl, *family_inputs(family, PROBE_T, s), "fwd+bwd")()   # one-time set-up costs, not the call's
    fn = _callable(impl, *family_inputs(family, T, s), "fwd+bwd")
    return {"peak_bytes": timing.rss_peak_bytes(fn)}


if __name__ == "__main__":
    print(json.dumps(_memory_child(json.loads(sys.argv[1]))))
