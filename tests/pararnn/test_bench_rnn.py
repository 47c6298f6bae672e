"""`linscan bench rnn` at a tiny size: the table, the JSON, and that what it times is the same solution."""

import json

from linscan import cli


def test_bench_rnn_writes_timings_and_convergence(tmp_path, capsys):
    out = tmp_path / "rnn.json"
    assert cli.main(["bench", "rnn", "--cells", "gru,lstm", "--lengths", "40", "--batch", "2", "--dim", "8",
                     "--train-steps", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "newton" in table and "max|F| per iterate" in table
    results = json.loads(out.read_text())
    for key in ("gru T=40", "lstm T=40"):
        r = results["timings"][key]
        assert all(r[f"{v} {p}"] > 0 for v in ("loop", "newton") for p in ("fwd", "fwd+bwd"))
        assert r["max_abs_error_vs_loop"] < 1e-3, r           # 3 Newton steps on a contractive random cell
        assert r["residuals"][-1] < r["residuals"][0]
    trained = results["trained"]
    assert trained["steps"] == 2 and len(trained["residuals_trained"]) == 9
    assert trained["residuals_trained"][-1] < 1e-5


def test_bench_rnn_rejects_unknown_cells(capsys):
    assert cli.main(["bench", "rnn", "--cells", "gru,nope"]) == 1
    assert "--cells" in capsys.readouterr().err
