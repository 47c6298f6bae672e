"""`linscan train --sequence-parallel 2` under torchrun logs the same losses as one process."""

import json
import os
import subprocess
import sys

import pytest

from ..train.corpus import write_corpus
from .ranks import _free_port

ARGS = ["--steps", "3", "--batch-size", "2", "--seq-len", "32", "--eval-every", "3", "--ckpt-every", "3",
        "--warmup", "1", "--sample", "0", "--threads", "1"]


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train(cmd, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_sequence_parallel_training_logs_the_single_process_losses(tmp_path):
    data = write_corpus(tmp_path / "corpus.txt")
    _train([sys.executable, "-m", "linscan", "train", "--data", str(data), "--out", str(tmp_path / "one"), *ARGS],
           tmp_path)
    _train([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
            "-m", "linscan", "train", "--sequence-parallel", "2", "--data", str(data), "--out", str(tmp_path / "sp"),
            *ARGS], tmp_path)
    one, sp = _rows(tmp_path / "one"), _rows(tmp_path / "sp")
    assert [r["step"] for r in sp] == [1, 2, 3]
    for a, b in zip(one, sp):
        for key in ("train_bpb", "val_bpb", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a, b)
    assert (tmp_path / "sp" / "latest").read_text() == "step-000003"


def test_sequence_parallel_that_does_not_divide_is_refused(tmp_path, capsys):
    from linscan.cli import main

    data = write_corpus(tmp_path / "corpus.txt")
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "x"), "--sequence-parallel", "3", *ARGS]
    assert main(argv) == 1                      # one process: 3 does not divide it
    assert "--sequence-parallel: expected a divisor of the 1 processes" in capsys.readouterr().err


@pytest.mark.parametrize("extra, fragment", [
    (["--seq-len", "31"], "expected a divisor of --seq-len 31"),
    (["--seq-len", "4"], "at least 4 tokens per rank"),
    (["--pattern", "DU"], "['U'] are Newton-parallel nonlinear RNNs"),
])
def test_sequence_parallel_arguments_checked_before_training(tmp_path, capsys, monkeypatch, extra, fragment):
    from linscan.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")              # as torchrun would set it; nothing starts
    data = write_corpus(tmp_path / "corpus.txt")
    args = [a for a in ARGS if a not in ("--seq-len", "32")]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "x"), "--sequence-parallel", "2",
                 *args, *extra]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sequence-parallel" in err and fragment in err, err
