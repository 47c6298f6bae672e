"""The GPU benchmark (linscan.bench.gpu): pure helpers, the CPU smoke run end to end, the real run on a GPU.

The smoke runs the Triton backends under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1
where there is no GPU), so it is restricted to T=32 and two variants to stay well under a minute.
"""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from linscan.bench import gpu
from linscan.bench.gpu.bars import evaluate_bars, summary
from linscan.bench.gpu.gate import gate_variant
from linscan.bench.gpu.metrics import gate_passes, gate_verdict, io_bytes, rates, rel_err, scan_flops, tensor_bytes
from linscan.bench.gpu.report import format_table, row_cells
from linscan.bench.gpu.run import SMOKE, Bench, make_timer
from linscan.bench.gpu.variants import VARIANTS, Dims, Peer, Variant, _heads_first, make_inputs, select
from linscan.ops import decay_scan, delta_scan, mlstm_scan, registry


# ----------------------------------------------------------------------------- FLOPs and bytes

def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_decay_flop_estimate_equals_the_chunk_backends_matmuls():
    """The decay formula is exactly the matmul FLOPs of the PyTorch chunk backend at C=64 (counted
    independently by torch's FlopCounterMode); mLSTM adds only the normaliser row."""
    B, T, H, K, V = 1, 256, 2, 32, 16
    q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    v, g = torch.randn(B, T, H, V), F.logsigmoid(torch.randn(B, T, H))
    est = scan_flops("decay", B=B, T=T, H=H, K=K, V=V, chunk=64)
    assert est == 2 * B * T * H * (64 * (K + V) + 2 * K * V)
    assert _counted(lambda: decay_scan(q, k, v, g, backend="chunk", chunk_size=64)) == est
    counted = _counted(lambda: mlstm_scan(q, k, v, torch.randn(B, T, H), torch.randn(B, T, H), backend="chunk",
                                          chunk_size=64))
    assert est <= counted <= 1.02 * est


@pytest.mark.parametrize("R", [1, 2])
def test_delta_flop_estimate_bounds_the_chunk_backends_matmuls(R):
    """The delta estimate counts T = (I + A)^-1 applied to K and V as two matmuls (as a kernel does);
    the chunk backend solves triangular systems instead, which FlopCounterMode does not count:
    so the count sits a little under the estimate, never over."""
    B, T, H, K, V = 1, 256, 2, 32, 32
    rows = (B, T) if R == 1 else (B, T, R)
    q, k, v = torch.randn(B, T, H, K), F.normalize(torch.randn(*rows, H, K), dim=-1), torch.randn(*rows, H, V)
    beta, g = torch.rand(*rows, H), F.logsigmoid(torch.randn(B, T, H))
    est = scan_flops("delta", B=B, T=T, H=H, K=K, V=V, chunk=64, R=R)
    counted = _counted(lambda: delta_scan(q, k, v, beta, g, backend="chunk"))   # 64 rows per chunk
    assert 0.8 * est <= counted <= est


def test_flop_estimates_by_hand():
    # delta, R=1, per token: 3CK + 2CV + 3KV multiply-adds
    assert scan_flops("delta", B=2, T=8, H=3, K=4, V=5, chunk=16) == 2 * 2 * 8 * 3 * (3 * 64 + 2 * 80 + 3 * 20)
    assert scan_flops("sdpa", B=2, T=8, H=3, K=4, V=4) == 2 * 2 * 3 * 8 ** 2 * 4
    fwd = scan_flops("mlstm", B=1, T=64, H=1, K=8, V=8)
    assert scan_flops("mlstm", B=1, T=64, H=1, K=8, V=8, mode="fwd+bwd") == 3 * fwd
    assert scan_flops("sdpa", B=1, T=64, H=1, K=8, V=8, mode="fwd+bwd") == 3.5 * scan_flops(
        "sdpa", B=1, T=64, H=1, K=8, V=8)
    with pytest.raises(ValueError, match="kind"):
        scan_flops("retention", B=1, T=1, H=1, K=1, V=1)
    with pytest.raises(ValueError, match="mode"):
        scan_flops("decay", B=1, T=1, H=1, K=1, V=1, mode="bwd")


def test_bytes_and_rates():
    x = [torch.zeros(4, 8, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.float32), None]
    assert tensor_bytes(x) == 4 * 8 * 2 + 3 * 4
    assert io_bytes(100, 20, "fwd") == 120 and io_bytes(100, 20, "fwd+bwd") == 240
    r = rates(4e12, 6e9, 2.0, {"matmul_tflops": 1000.0, "copy_gbs": 4000.0})
    assert r["tflops"] == pytest.approx(2000.0) and r["gbs"] == pytest.approx(3000.0)
    assert r["frac_matmul"] == pytest.approx(2.0) and r["frac_copy"] == pytest.approx(0.75)
    assert rates(1.0, 1, None, {})["tflops"] is None
    assert rates(1e12, 1, 1000.0, {"matmul_tflops": None})["frac_matmul"] is None


# ----------------------------------------------------------------------------- the gate rule

def test_rel_err():
    ref = torch.tensor([3.0, 4.0])
    assert rel_err(ref + torch.tensor([0.3, 0.4]), ref) == pytest.approx(0.1)
    assert math.isnan(rel_err(torch.tensor([float("nan"), 4.0]), ref))
    assert rel_err(torch.zeros(2), torch.zeros(2)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        rel_err(torch.zeros(3), ref)


def test_gate_rule():
    assert gate_passes(2 * 1.5e-3 + 1e-3, 1.5e-3)
    assert not gate_passes(2 * 1.5e-3 + 1.01e-3, 1.5e-3)
    assert gate_passes(0.0, 0.0) and gate_passes(1e-3, 0.0) and not gate_passes(1.1e-3, 0.0)
    assert not gate_passes(math.nan, 1e-3) and not gate_passes(1e-3, math.nan)
    assert gate_verdict({"o": 2e-3, "dq": 3e-3}, {"o": 2e-3, "dq": 1e-3}) == (True, [])
    assert gate_verdict({"o": 2e-3, "dq": 5e-3}, {"o": 2e-3, "dq": 1e-3}) == (False, ["dq"])
    assert gate_verdict({"o": 2e-3}, {"o": 2e-3, "dk": 1e-3}) == (False, ["dk"])    # a gradient missing
    assert gate_verdict({}, {}) == (False, [])


# ----------------------------------------------------------------------------- bars

def _m(fb=None, peak=None, status="ok", impl="x"):
    return {"impl": impl, "status": status, "fwd_ms": None, "fwdbwd_ms": fb, "peak_bytes": peak}


def test_bars_on_synthetic_rows():
    rows = [
        {"variant": "sdpa", "T": 2048, "B": 32, "ours": _m(5.0, 100), "peer": None},
        {"variant": "decay_scalar", "T": 2048, "B": 32, "ours": _m(4.0, 50), "peer": _m(5.0, 60, impl="fla a")},
        {"variant": "sdpa", "T": 8192, "B": 8, "ours": _m(10.0, 100), "peer": None},
        {"variant": "decay_scalar", "T": 8192, "B": 8, "ours": _m(12.0, 150), "peer": _m(10.0, impl="fla a")},
        {"variant": "gated_delta", "T": 8192, "B": 8, "ours": _m(status="not timed: gate FAILED"),
         "peer": _m(3.0, impl="fla b")},
        {"variant": "mlstm_exp", "T": 8192, "B": 8, "ours": _m(8.0, 90),
         "peer": _m(status="not installed", impl="mk")},
    ]
    bars = evaluate_bars(rows, sdpa_from_T=8192, memory_T=8192)
    got = {(b["variant"], b["T"], b["bar"].split(" ")[0], b["bar"].split("/ ")[1].split(" ")[0]): b for b in bars}
    assert got[("decay_scalar", 2048, "time", "fla")]["status"] == "PASS"
    assert got[("decay_scalar", 2048, "time", "fla")]["value"] == pytest.approx(0.8)
    assert ("decay_scalar", 2048, "time", "SDPA") not in got                         # only from T = 8192 on
    assert got[("decay_scalar", 8192, "time", "fla")]["status"] == "FAIL"            # 1.2 > 1
    assert got[("decay_scalar", 8192, "time", "SDPA")]["status"] == "FAIL"           # 12 ms vs 10 ms
    assert got[("decay_scalar", 8192, "peak", "SDPA")]["status"] == "FAIL"           # 150 vs 100 bytes
    assert got[("mlstm_exp", 8192, "time", "SDPA")]["status"] == "PASS"
    assert got[("mlstm_exp", 8192, "peak", "SDPA")]["status"] == "PASS"
    na = got[("mlstm_exp", 8192, "time", "mk")]
    assert na["status"] == "n/a" and "not installed" in na["why"]
    failed = got[("gated_delta", 8192, "time", "fla")]
    assert failed["status"] == "n/a" and "gate FAILED" in failed["why"]
    assert summary(bars) == {"PASS": 3, "FAIL": 3, "n/a": 4}
    # equal to SDPA is not faster; equal to the peer is enough
    tie = [{"variant": "sdpa", "T": 8, "B": 1, "ours": _m(1.0, 10), "peer": None},
           {"variant": "v", "T": 8, "B": 1, "ours": _m(1.0, 10), "peer": _m(1.0)}]
    assert [b["status"] for b in evaluate_bars(tie, sdpa_from_T=8, memory_T=8)] == ["PASS", "FAIL", "FAIL"]


# ----------------------------------------------------------------------------- variants and peer layouts

def test_inputs_dtypes_shapes_and_seed():
    d = Dims(2, 8, 3, 4, 5)
    x = make_inputs(VARIANTS["delta_product"], d, device="cpu", dtype=torch.bfloat16)
    assert x["q"].shape == (2, 8, 3, 4) and x["k"].shape == (2, 8, 2, 3, 4) and x["v"].shape == (2, 8, 2, 3, 5)
    assert x["beta"].shape == (2, 8, 2, 3) and x["g"].shape == (2, 8, 3)
    assert {x[n].dtype for n in "qkv"} == {torch.bfloat16} and x["g"].dtype == x["beta"].dtype == torch.float32
    assert torch.allclose(x["k"].float().norm(dim=-1), torch.ones(2, 8, 2, 3), atol=1e-2)
    assert (x["g"] <= 0).all() and ((x["beta"] > 0) & (x["beta"] < 1)).all()
    again = make_inputs(VARIANTS["delta_product"], d, device="cpu", dtype=torch.bfloat16)
    assert all(torch.equal(x[n], again[n]) for n in x)
    assert make_inputs(VARIANTS["decay_diag"], d, device="cpu", dtype=torch.float64)["g"].shape == (2, 8, 3, 4)
    assert [v.name for v in select(["mlstm_exp", "decay_scalar"])] == ["decay_scalar", "mlstm_exp"]
    with pytest.raises(ValueError, match="--only"):
        select(["decay"])


def test_delta_product_layout_matches_fla_reference():
    """linscan's [B, T, R, H, K] reshaped is fla's interleaved [B, T*R, H, K]: fla's own token loop on
    the converted inputs equals linscan's naive backend."""
    naive = pytest.importorskip("fla.ops.gated_delta_product.naive")
    variant = VARIANTS["delta_product"]
    x = make_inputs(variant, Dims(1, 12, 2, 8, 8), device="cpu", dtype=torch.float64)
    ours = delta_scan(**x, backend="naive")[0]
    peer = naive.naive_recurrent_gated_delta_product(**variant.peer.convert(x), scale=8 ** -0.5,
                                                     num_householder=2)[0]
    assert rel_err(peer, ours) < 1e-5


def test_mlstm_heads_first_layout_matches_mlstm_kernels_native():
    native = pytest.importorskip("mlstm_kernels.torch.chunkwise.native")
    variant = VARIANTS["mlstm_exp"]
    x = make_inputs(variant, Dims(1, 64, 2, 16, 16), device="cpu", dtype=torch.float32)
    ours = mlstm_scan(**x, backend="naive")[0]
    peer = native.mlstm_chunkwise__native_autograd(**variant.peer.convert(x), chunk_size=16)
    peer = peer[0] if isinstance(peer, tuple) else peer
    assert rel_err(variant.peer.to_output_layout(peer), ours) < 1e-4


# ----------------------------------------------------------------------------- robustness

def test_failing_backend_is_reported_and_not_timed(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setitem(registry._BACKENDS["decay"], "triton", broken)
    result = gate_variant(VARIANTS["decay_scalar"], Dims(1, 16, 1, 8, 8), device="cpu", dtype=torch.bfloat16)
    assert result["status"] == "error: RuntimeError: kernel exploded"
    assert result["errors_reference_low"]["o"] < 1e-2 and result["errors"] == {}
    bench = Bench(SMOKE, make_timer(SMOKE), {}, log=lambda msg: None)
    row = bench.row(VARIANTS["decay_scalar"], 32, result["status"])
    assert row["ours"]["status"].startswith("not timed: gate error") and row["ours"]["fwd_ms"] is None
    assert row["peer"]["status"] == "no peers (smoke)"


def test_oom_and_budget_become_statuses():
    bench = Bench(SMOKE, make_timer(SMOKE), {}, log=lambda msg: None)

    def oom(**inputs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    variant = VARIANTS["decay_scalar"]
    x = make_inputs(variant, Dims(1, 8, 1, 4, 4), device="cpu", dtype=torch.bfloat16)
    m = bench.measure(variant, "x", oom, x, torch.zeros(1, 8, 1, 4), 8, "ok")
    assert m["status"] == "OOM" and m["fwd_ms"] is None and m["fwd_rates"]["tflops"] is None
    bench.s = SMOKE.__class__(**{**SMOKE.__dict__, "budget_s": 0.0})
    m = bench.measure(variant, "x", oom, x, torch.zeros(1, 8, 1, 4), 8, "ok")
    assert m["status"].startswith("skipped (time budget")


def heads_first_decay(q, k, v, g):
    """A stand-in peer in mlstm_kernels' layout ([B, H, T, *] in, h [B, H, T, V] out)."""
    o = decay_scan(*(x.transpose(1, 2) for x in (q, k, v, g)), backend="chunk")[0]
    return o.transpose(1, 2), None


def test_peer_rows_ratio_and_output_check(monkeypatch):
    """With a peer (here a heads-first stand-in importable from this module), a row times both, and the
    peer's output, mapped back from its layout, is compared with linscan's."""
    monkeypatch.setitem(registry._BACKENDS["decay"], "triton", registry._BACKENDS["decay"]["chunk"])  # speed
    peer = Peer("stand-in", __name__, "heads_first_decay", convert=_heads_first, heads_first=True)
    variant = Variant("stand_in", "decay", VARIANTS["decay_scalar"].make, peer)
    s = dataclasses.replace(SMOKE, peers=True)
    row = Bench(s, make_timer(s), {"matmul_tflops": 1.0, "copy_gbs": 1.0}, log=lambda msg: None).row(
        variant, 32, "PASS")
    assert row["ours"]["status"] == row["peer"]["status"] == "ok"
    assert row["peer"]["fwdbwd_ms"] > 0 and row["peer"]["first_calls_s"] > 0
    assert row["peer_o_diff"] == 0.0            # the same computation (chunk) behind both
    cells = row_cells(row, None)
    assert cells[6] == f"{row['ours']['fwdbwd_ms'] / row['peer']['fwdbwd_ms']:.2f}"
    assert Peer("x", "no_such_package_xyz.ops", "f").load() == (None, "not installed")


# ----------------------------------------------------------------------------- end to end

def test_smoke_end_to_end(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--smoke", "--only", "decay_scalar,mlstm_exp", "--lengths", "32", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "gpu" and report["complete"] is True
    assert set(report) >= {"setup", "versions", "device", "ceilings", "gate", "rows", "bars", "bars_summary"}
    assert report["setup"]["smoke"] and report["setup"]["lengths"] == [32] and report["setup"]["B"] == {"32": 4}
    assert report["versions"]["torch"] == torch.__version__
    assert report["ceilings"]["matmul_tflops"] > 0 and report["ceilings"]["copy_gbs"] > 0
    # the gate compares triton (interpreted) against a float64 reference, gradients included
    for g in report["gate"]:
        assert g["status"] == "PASS", g
        assert set(g["errors"]) == {"o", "dq", "dk", "dv", *(("dg",) if g["variant"] == "decay_scalar" else
                                                            ("di", "df"))}
        assert all(0 < e < 2e-2 for e in g["errors"].values()), g
    assert [(r["variant"], r["T"]) for r in report["rows"]] == [("sdpa", 32), ("decay_scalar", 32),
                                                                 ("mlstm_exp", 32)]
    for row in report["rows"]:
        ours = row["ours"]
        assert ours["status"] == "ok" and ours["fwd_ms"] > 0 and ours["fwdbwd_ms"] > 0, ours
        assert ours["fwdbwd_flops"] == 3 * ours["fwd_flops"] or row["variant"] == "sdpa"
        assert ours["fwdbwd_rates"]["tflops"] > 0
        assert row["peer"] is None if row["variant"] == "sdpa" else row["peer"]["status"] == "no peers (smoke)"
    kinds = {(b["variant"], b["bar"].split(" ")[0], b["status"] != "n/a") for b in report["bars"]}
    assert ("decay_scalar", "time", True) in kinds                       # vs SDPA, evaluated
    assert ("mlstm_exp", "peak", False) in kinds                         # no CUDA memory on the CPU
    text = capsys.readouterr().out
    assert "gate (rel. L2" in text and "bars (fwd+bwd)" in text and "decay_scalar" in text
    assert text.strip() == format_table(report).strip()


def test_bad_arguments():
    with pytest.raises(SystemExit):
        gpu.main(["--smoke", "--lengths", "abc"])
    assert gpu.main(["--smoke", "--only", "nope"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a CUDA device")
def test_real_run_needs_cuda(capsys):
    assert gpu.main(["--lengths", "2048"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_run_at_one_length(tmp_path):
    """The real thing at T=2048 (B=32, H=16, K=V=128, bf16): every gate passes and every linscan row is
    timed; peers are timed when installed."""
    out = tmp_path / "gpu.json"
    assert gpu.main(["--lengths", "2048", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["complete"] and report["ceilings"]["matmul_tflops"] > 50 and report["ceilings"]["copy_gbs"] > 500
    assert all(g["status"] == "PASS" for g in report["gate"]), report["gate"]
    for row in report["rows"]:
        assert row["ours"]["status"] == "ok" and row["ours"]["fwdbwd_ms"] > 0 and row["ours"]["peak_bytes"] > 0
        if row["peer"] is not None and row["peer"]["status"] == "ok":
            assert row["peer"]["fwdbwd_ms"] > 0
