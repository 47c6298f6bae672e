"""``linscan eval arrow`` end to end at a tiny size, its errors, and a training loop that learns."""

import json

import pytest
import torch

from linscan.cli import main
from linscan.eval import arrow
from linscan.models.vision import VisionConfig

TINY = ["--train-size", "32", "--train-images", "32", "--test-images", "8", "--steps", "2", "--batch-size", "8",
        "--d-model", "16", "--layers", "1", "--heads", "2", "--threads", "1"]


def test_cli_writes_the_table_and_files(tmp_path, capsys):
    assert main(["eval", "arrow", "--mixers", "plstm_d,attention", *TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "32 px" in out and "64 px" in out and "plstm_d" in out and "attention" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["mixers"]) == {"plstm_d", "attention"} and results["config"]["test_size"] == 64
    for name in ("accuracy.png", "examples_32.png", "examples_64.png"):
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["--mixers", "vit"], "--mixers: expected names from plstm"),
    (["--train-size", "36"], "--train-size: expected a multiple of the patch size 8, got 36"),
    (["--test-size", "16"], "--test-size: expected >= train_size = 32, got 16"),
    (["--device", "tpu"], "--device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
])
def test_bad_values_are_one_line_errors(argv, message, capsys):
    assert main(["eval", "arrow", *TINY, *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"linscan: error: {message}" or err[-1].startswith(f"linscan: error: {message}")


def test_malformed_numbers_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "arrow", "--steps", "0"])
    assert exit_.value.code == 2


def test_training_loop_learns_an_easy_image_rule():
    """Label 1 iff the top-left patch is bright: the loop (batches, labels, optimiser, schedule)
    must reach near-perfect accuracy; it fails if the labels are not those of the batch's images."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (256,), generator=gen)
    images = 0.5 * torch.rand(256, 3, 16, 16, generator=gen)
    images[labels == 1, :, :8, :8] += 0.5
    data = {"train": (images[:192], labels[:192]), 16: (images[192:], labels[192:])}
    vision = VisionConfig(image_size=16, patch_size=8, d_model=16, n_layers=1, n_heads=2, mixer="lightnet")
    result = arrow._train_and_test(vision, data, [16], seed=0, steps=120, batch_size=16, lr=3e-3, log=open("/dev/null", "w"))
    assert result["acc"][16] >= 0.95
