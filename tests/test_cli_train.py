"""`linscan train` / `linscan generate`: a tiny end-to-end run and the one-line errors."""

import subprocess
import sys

import pytest

from linscan.cli import main


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"for i in range({i}):\n    print(i)\n" for i in range(300)))
    return path


def test_train_then_generate(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--data", str(text_file), "--steps", "3", "--batch-size", "2", "--seq-len", "32",
               "--eval-every", "3", "--out", str(run), "--sample", "20", "--pattern", "DA"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "bits per byte" in out and "unigram entropy" in out and "sample (recurrent cache" in out
    assert (run / "latest").is_file() and (run / "metrics.jsonl").is_file()
    rc = main(["generate", "--ckpt", str(run), "--prompt", "for i", "--max-new-tokens", "10", "--temperature", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("for i")


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "huge"], "preset: expected one of ['125m', '350m', 'small', 'tiny'], got 'huge'"),
    (["train", "--pattern", "DQ"], "pattern: unknown mixer letter(s) ['Q']"),
    (["train", "--data", "/no/such/path"], "--data: no such file or folder: /no/such/path"),
    (["generate", "--ckpt", "/no/such/run"], "--ckpt: no model.safetensors and config.json under /no/such/run"),
])
def test_one_line_errors(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_out_of_range_numbers_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--steps", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == "linscan train: error: argument --steps: expected a positive integer, got '0'\n"


def test_console_script_error_exit_code():
    res = subprocess.run([sys.executable, "-m", "linscan.cli", "train", "--preset", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
