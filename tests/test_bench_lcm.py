"""``linscan.bench.lcm`` (tiny): the run end to end (JSON, PNG, table), and LCM learning a small second minimum."""

from __future__ import annotations

import json

import pytest
import torch

from linscan.bench import lcm as bench


@pytest.fixture(autouse=True)
def one_thread():
    """The bench runs on one thread (``run`` sets it); the rest of the suite gets its threads back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_smoke_run_writes_json_png_and_table(tmp_path, capsys):
    out = tmp_path / "run"
    assert bench.main(["--out", str(out), "--width", "8", "--steps", "3", "--batch-size", "8", "--n-train", "32",
                       "--train-sizes", "2-5", "--test-sizes", "6,9", "--test-sets", "8", "--time-sizes", "4,9",
                       "--time-batch", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["aggregator"] for r in results["rows"]] == list(bench.AGGREGATOR_NAMES)
    assert set(results["rows"][0]["accuracy"]) == {"train", "6", "9"}
    assert [(t["aggregator"], t["n"], t["sequential_steps"]) for t in results["timing"]] == [
        ("lcm", 4, 2), ("gru", 4, 4), ("lcm", 9, 4), ("gru", 9, 9)]
    assert (out / "lcm.png").read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "exact match" in table and "majority" in table and "seq. steps" in table


def test_labels_are_the_second_smallest():
    values, size, labels = bench.sample_sets(50, (2, 6), 4, torch.Generator().manual_seed(0))
    for v, n, y in zip(values, size, labels):
        assert y == sorted(v[:n].tolist())[1]
    assert bench.to_bits(torch.tensor([5]), 4).tolist() == [[0, 1, 0, 1]]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"aggregators: expected some of .*, got \('lcm', 'median'\)"):
        bench.run(aggregators=("lcm", "median"))
    with pytest.raises(ValueError, match=r"test_sizes: expected sizes >= 2 .*, got \(1, 8\)"):
        bench.run(test_sizes=(1, 8))


def test_lcm_learns_a_small_second_minimum():
    """Sets of 2..4 integers in 0..7: LCM well above the majority label after a few hundred steps."""
    g = torch.Generator().manual_seed(0)
    train_data = bench.sample_sets(4096, (2, 4), 3, g)
    test_data = bench.sample_sets(512, (2, 4), 3, g)
    model, _ = bench.train("lcm", train_data, width=16, bits=3, steps=300, batch_size=64, lr=1e-2, seed=0,
                           progress=False)
    chance = bench.majority_share(test_data)
    accuracy = bench.exact_match(model, test_data, 3)
    assert chance < 0.25 and accuracy > 0.6, (accuracy, chance)          # 0.86 vs 0.18 when written
