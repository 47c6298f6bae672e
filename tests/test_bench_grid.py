"""``linscan bench grid`` runs end to end at a tiny size; LINSCAN_BACKEND naming a 1-D backend leaves
the grid families on their own default."""

import json

import pytest

from linscan.bench import grid
from linscan.ops import registry


def test_bench_grid_smoke(tmp_path, capsys):
    out = tmp_path / "grid.json"
    result = grid.run(sides=(3, 4), naive_max=3, H=1, K=2, threads=1, out=str(out))
    rows = {(r["op"], r["backend"], r["side"]): r for r in result["rows"]}
    cases = [("plstm2d P", "tile"), ("plstm2d P", "sweep"), ("plstm2d D", "tile"), ("plstm2d D", "sweep"),
             ("ssm2d", "sweep")]
    assert set(rows) == {(op, backend, side) for op, backend in cases for side in (3, 4)}
    assert all("speedup_fwdbwd" in rows[op, backend, 3] and "naive_fwd_s" not in rows[op, backend, 4]
               for op, backend in cases)
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert "us/cell" in capsys.readouterr().out


def test_env_backend_of_another_family_falls_back(monkeypatch):
    monkeypatch.setenv("LINSCAN_BACKEND", "chunk")
    assert registry.resolve("plstm2d") == "tile" and registry.resolve("ssm2d") == "sweep"
    assert registry.resolve("decay") == "chunk"
    monkeypatch.setenv("LINSCAN_BACKEND", "naive")
    assert registry.resolve("plstm2d") == "naive"
    monkeypatch.setenv("LINSCAN_BACKEND", "no_such_backend")
    with pytest.raises(ValueError, match="LINSCAN_BACKEND"):
        registry.resolve("plstm2d")
