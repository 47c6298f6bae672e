"""The `linscan` command: info, bench ops at tiny sizes, one-line usage errors, the bars."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from linscan import cli
from linscan.bench import ops, timing


def run_main(capsys, *argv):
    """main(argv) in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main(list(argv))
    except SystemExit as e:  # argparse usage errors
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def test_info_lists_versions_devices_and_backends(capsys):
    status, out, _ = run_main(capsys, "info")
    assert status == 0
    for key in ("linscan", "torch", "python", "triton", "cpu threads", "cuda", "backends"):
        assert any(line.startswith(key) for line in out.splitlines()), key
    assert torch.__version__ in out
    assert "decay: " in out and "chunk" in out
    if not torch.cuda.is_available():
        assert any(line.split() == ["cuda", "none"] for line in out.splitlines())


def test_info_json(capsys):
    status, out, _ = run_main(capsys, "info", "--json")
    info = json.loads(out)
    assert status == 0
    assert info["backends"]["decay"] == sorted(info["backends"]["decay"])
    assert {"chunk", "naive"} <= set(info["backends"]["decay"])
    assert info["triton"]                                   # a version or "not installed"
    assert (info["cuda"] == []) == (not torch.cuda.is_available())


def test_console_script_bench_in_a_fresh_process(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "linscan")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "linscan.cli"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    path = tmp_path / "b.json"
    proc = subprocess.run([*command, "bench", "ops", "--family", "decay", "--T", "64", "--repeats", "1",
                           "--no-peers", "--no-naive", "--out", str(path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "linscan chunk" in proc.stdout and "skipped" in proc.stdout
    assert "USDT" not in proc.stderr                        # the profiler's chatter is silenced
    assert json.loads(path.read_text())["omp_wait_policy"] == "PASSIVE"


@pytest.mark.parametrize("argv, message", [
    (["bench", "ops", "--family", "decay,nope"], "unknown family 'nope'"),
    (["bench", "ops", "--T", "64,abc"], "expected comma-separated positive integers"),
    (["bench", "ops", "--T", "0"], "expected comma-separated positive integers"),
    (["bench", "ops", "--repeats", "0"], "expected a positive integer"),
    (["bench", "nope"], "invalid choice"),
    ([], "required"),
])
def test_usage_errors_are_one_line(capsys, argv, message):
    status, out, err = run_main(capsys, *argv)
    assert status == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err


def test_bad_out_directory_fails_before_running(capsys, tmp_path):
    status, _, err = run_main(capsys, "bench", "ops", "--T", "64", "--out", str(tmp_path / "no" / "b.json"))
    assert status == 1
    assert err.strip().splitlines() == [f"linscan: error: --out: directory of "
                                         f"'{tmp_path / 'no' / 'b.json'}' does not exist"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_cuda_without_a_device_is_one_line(capsys):
    status, _, err = run_main(capsys, "bench", "ops", "--device", "cuda")
    assert status == 1
    assert err.strip() == "linscan: error: --device cuda: no CUDA device is available"


def test_bench_ops_tiny_writes_json_and_table(capsys, tmp_path):
    path = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        # one thread: this process imported torch without OMP_WAIT_POLICY=PASSIVE (see cli)
        status, out, err = run_main(capsys, "bench", "ops", "--family", "decay", "--T", "64,128",
                                    "--threads", "1", "--repeats", "1", "--no-peers", "--out", str(path))
    finally:
        torch.set_num_threads(threads)
    assert status == 0, err
    report = json.loads(path.read_text())
    assert {"linscan_version", "torch_version", "device", "dtype", "threads", "T", "B", "H", "K", "V",
            "repeats", "timing", "memory", "env", "families", "rows", "bars"} <= report.keys()
    assert report["families"] == {"decay": "ok"}           # --no-peers: no attention block either
    assert report["T"] == [64, 128] and report["threads"] == 1 and report["dtype"] == "float32"
    rows = {(r["impl"], r["T"], r["mode"]): r for r in report["rows"]}
    assert set(rows) == {(impl, T, mode) for impl in ("linscan naive", "linscan chunk")
                         for T in (64, 128) for mode in ("fwd", "fwd+bwd")}
    for r in rows.values():
        assert r["status"] == "ok" and r["time_s"] > 0 and len(r["times_s"]) == 1
    chunk = rows[("linscan chunk", 128, "fwd+bwd")]
    assert chunk["memory_status"] == "ok" and chunk["peak_bytes"] > 0 or chunk["memory_status"].startswith("no ")
    assert rows[("linscan chunk", 128, "fwd")]["peak_bytes"] is None      # memory: fwd+bwd only
    assert rows[("linscan naive", 64, "fwd")]["rel_err"] < 1e-5
    assert {b["status"] for b in report["bars"]} == {"n/a"}  # no T=4096 at this size
    assert "decay" in out and "linscan chunk" in out and "T=128" in out and "fwd+bwd MiB" in out
    assert "bars (fwd+bwd)" in out
    assert "warm-up linscan chunk" in err                    # progress goes to stderr


def test_no_naive_and_naive_cap_say_skipped(capsys):
    report = ops.run(["decay"], T=[64], threads=1, repeats=1, peers=False, naive=False, memory=False,
                     log=lambda msg: None)
    naive = [r for r in report.rows if r["role"] == "naive"]
    assert naive and all(r["status"] == "skipped (--no-naive)" and r["time_s"] is None for r in naive)
    runner = ops.Runner(ops.CPU, repeats=1, naive=True, log=lambda msg: None)
    naive_impl = ops.Impl("linscan naive", "naive", None)
    assert runner.skip_reason(naive_impl, ops.NAIVE_MAX_T) is None
    assert runner.skip_reason(naive_impl, 16384).startswith("skipped")
    assert "skipped" in ops.format_table(report)


def test_unavailable_family_is_reported_not_raised(monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise NotImplementedError("delta_scan is not written yet")

    monkeypatch.setattr(ops.linscan_ops, "delta_scan", missing)
    report = ops.run(["delta"], T=[64], threads=1, repeats=1, peers=False, memory=False, log=lambda msg: None)
    assert report.families == {"delta": "not available: delta_scan is not written yet"}
    assert report.rows == []
    assert {b["status"] for b in report.bars} == {"n/a"}
    assert "delta: not available: delta_scan is not written yet" in ops.format_table(report)


def test_missing_peer_says_not_installed():
    fn, status = ops._import("surely_not_a_linscan_peer.ops", "f")
    assert fn is None and status == "not installed"
    fn, status = ops._import("linscan.no_such_module", "f")
    assert fn is None and status.startswith("import failed")


def _row(family, role, T, time_s, peak=None):
    return {"family": family, "impl": f"{family} {role}", "role": role, "T": T, "mode": "fwd+bwd",
            "status": "ok", "time_s": time_s, "peak_bytes": peak}


def test_bars_pass_fail_and_na():
    report = ops.Report(meta={}, families={"decay": "ok", "mlstm": "ok"})
    report.rows = [
        _row("decay", "naive", 4096, 10.0), _row("decay", "chunk", 4096, 0.1, peak=100),
        _row("decay", "peer", 4096, 0.2), _row("decay", "chunk", 16384, 0.5, peak=400),
        _row("mlstm", "chunk", 4096, 0.1, peak=100), _row("mlstm", "peer", 4096, 0.1),
    ]
    got = {(b["family"], b["bar"].split(",")[0].split(" T=")[0]): (b["status"], b["value"]) for b in ops.bars(report)}
    assert got[("decay", "chunk speed-up over naive")] == ("PASS", pytest.approx(100.0))
    assert got[("decay", "chunk / decay peer")] == ("PASS", pytest.approx(0.5))
    assert got[("decay", "chunk time")] == ("FAIL", pytest.approx(5.0))
    assert got[("decay", "chunk peak memory")] == ("PASS", pytest.approx(4.0))
    assert got[("mlstm", "chunk / mlstm peer")] == ("FAIL", pytest.approx(1.0))
    assert got[("mlstm", "chunk speed-up over naive")][0] == "n/a"


def test_rss_peak_bytes_sees_a_transient_allocation():
    def work():
        x = torch.ones(64 << 20, dtype=torch.uint8)        # above malloc's mmap threshold: fresh pages
        del x

    peak = timing.rss_peak_bytes(work)
    if peak is None:
        pytest.skip("no writable /proc/self/clear_refs here")
    assert (56 << 20) <= peak < (80 << 20)               # give or take pages that were resident


def test_memory_child_process_reports_bytes():
    runner = ops.Runner(ops.CPU, repeats=1, naive=False, log=lambda msg: None)
    impl = ops.implementations("decay", ops.CPU, peers=False)[1]
    peak, status = runner.peak("decay", impl, 256, fn=None)
    if timing.rss_peak_bytes(lambda: None) is None:
        assert peak is None and "clear_refs" in status
    else:
        assert status == "ok" and peak > 0


def test_round_robin_times_slow_calls_once():
    calls = {"fast": lambda: None, "slow": lambda: None}
    times = timing.time_round_robin(calls, repeats=3, warm={"fast": 0.0, "slow": 10.0}, slow_s=5.0)
    assert len(times["fast"]) == 3 and len(times["slow"]) == 1


def test_passive_openmp_only_for_bench_before_torch(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli._passive_openmp(["bench", "ops"])       # torch already imported here: left alone
    assert "OMP_WAIT_POLICY" not in os.environ
