"""`linscan bench sp` on 2 local ranks: the linear families send the same bytes at every T
(state summaries), attention's grow with T; JSON and table written."""

import json

from linscan.cli import main


def test_bench_sp_bytes_constant_in_T_for_linear_families(tmp_path, capsys):
    out = tmp_path / "sp.json"
    argv = ["bench", "sp", "--lengths", "64,256", "--world", "2", "--families", "decay,delta,attention",
            "--heads", "2", "--head-dim", "8", "--out", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    sent = {(r["family"], r["T"]): r["bytes_sent_per_rank"] for r in rows}
    for family in ("decay", "delta"):
        assert sent[family, 64] == sent[family, 256] > 0
    assert sent["attention", 256] > 3 * sent["attention", 64]
    assert "sent/rank KiB" in capsys.readouterr().out


def test_bench_sp_refuses_lengths_that_do_not_split(capsys):
    assert main(["bench", "sp", "--lengths", "65", "--world", "2"]) == 1
    assert "--lengths" in capsys.readouterr().err
