"""``linscan bench lmul`` on a tiny saved model: the report's structure, the CLI, and its errors."""

import json
import math

import pytest
import torch

from linscan.bench import lmul
from linscan.cli import main
from linscan.models import LinscanForCausalLM, LinscanConfig
from linscan.train.checkpoint import save_model


def tiny_model(tmp_path, pattern):
    torch.manual_seed(0)
    model = LinscanForCausalLM(LinscanConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, pattern=pattern))
    return save_model(tmp_path / f"model-{pattern}", model)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("def f(x):\n    return x + 1\n" * 400)
    return str(path)


def test_report_has_every_measurement(tmp_path, text, capsys):
    report = lmul.run(str(tiny_model(tmp_path, "DA")), data=text, batch_size=2, seq_len=16, eval_batches=1,
                      pairs=512, threads=1, out=str(tmp_path / "out"), log=open("/dev/null", "w"))
    assert set(report["bpb"]) == {"exact", "lmul 23 bits", "lmul 4 bits", "lmul 3 bits"}
    assert all(math.isfinite(b) and b > 0 for b in report["bpb"].values())
    assert report["bpb"]["lmul 3 bits"] != report["bpb"]["exact"]
    for row in report["errors"].values():
        assert set(row) == {"continuous", "representable", "model scores", "model values"}
        assert all(0 <= e < 1 for e in row.values())
    assert json.loads((tmp_path / "out" / "lmul.json").read_text())["bpb"] == report["bpb"]
    assert "validation bits per byte" in capsys.readouterr().out


def test_cli_names_the_checkpoint_without_attention(tmp_path, text, capsys):
    folder = tiny_model(tmp_path, "D")
    assert main(["bench", "lmul", "--ckpt", str(folder), "--data", text, "--eval-batches", "1"]) == 1
    assert "--ckpt: expected a model with attention layers" in capsys.readouterr().err
    assert main(["bench", "lmul", "--ckpt", str(tmp_path / "missing")]) == 1
    assert "--ckpt: no model.safetensors" in capsys.readouterr().err
