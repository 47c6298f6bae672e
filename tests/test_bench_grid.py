"""``linscan bench grid`` runs end to end at a tiny size; LINSCAN_BACKEND naming a 1-D backend leaves
the grid families on their own default."""

import json

import pytest

from linscan.bench import grid
from linscan.ops import registry


def test_bench_grid_smoke(tmp_path, capsys):
    out = tmp_path / "grid.json"
    result = grid.run(sides=(3, 4), naive_max=3, H=1, K=2, threads=1, out=str(out))
    rows = {(r["op"], r["side"]): r for r in result["rows"]}
    assert set(rows) == {(op, side) for op in ("plstm2d P", "plstm2d D", "ssm2d") for side in (3, 4)}
    assert all("speedup_fwdbwd" in rows[op, 3] and "naive_fwd_s" not in rows[op, 4]
               for op in ("plstm2d P", "plstm2d D", "ssm2d"))
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert "us/cell" in capsys.readouterr().out


def test_env_backend_of_another_family_falls_back(monkeypatch):
    monkeypatch.setenv("LINSCAN_BACKEND", "chunk")
    assert registry.resolve("plstm2d") == "sweep" and registry.resolve("decay") == "chunk"
    monkeypatch.setenv("LINSCAN_BACKEND", "naive")
    assert registry.resolve("plstm2d") == "naive"
    monkeypatch.setenv("LINSCAN_BACKEND", "no_such_backend")
    with pytest.raises(ValueError, match="LINSCAN_BACKEND"):
        registry.resolve("plstm2d")
