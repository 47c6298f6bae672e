"""`linscan bench mom` (tiny): both layers measured in fresh processes, JSON and table written."""

import json

from linscan.cli import main


def test_bench_mom_writes_both_layers(tmp_path, capsys):
    out = tmp_path / "mom.json"
    assert main(["bench", "mom", "--length", "64", "--d-model", "16", "--heads", "2", "--threads", "1",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["mixer"] for r in result["rows"]] == ["gated_deltanet", "mom"]
    assert result["rows"][1]["parameters"] > result["rows"][0]["parameters"]
    assert result["time_ratio"] > 0 and result["memories_touched"] == 3
    assert "MoM / Gated DeltaNet" in capsys.readouterr().out
