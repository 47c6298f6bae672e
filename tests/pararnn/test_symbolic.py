"""Symbolic code of AL-RNN trajectories: subregion ids, transition graph, plots, Lorenz sweep."""

import json

import numpy as np
import pytest
import torch

from linscan.pararnn import lorenz, symbolic


def test_subregion_ids_from_sign_pattern():
    # M = 5, P = 3: units 2, 3, 4 are the PWL units; bit k <=> unit 2 + k > 0
    signs = torch.tensor([[+1, +1, -1, -1, -1],     # none active       -> 0
                          [-1, -1, +1, -1, -1],     # unit 2            -> 1
                          [+9, -9, -1, +1, +1],     # units 3, 4        -> 2 + 4
                          [-1, +1, +1, +1, +1]],    # all               -> 7
                         dtype=torch.float32)
    ids = symbolic.subregion_ids(signs, 3)
    assert ids.tolist() == [0, 1, 6, 7]
    assert [symbolic.subregion_label(i, 3) for i in ids] == ["000", "100", "011", "111"]
    assert symbolic.subregion_ids(signs.reshape(2, 2, 5), 3).tolist() == [[0, 1], [6, 7]]
    # zero is the inactive side of the ReLU (the map uses relu(0) = 0 there)
    assert symbolic.subregion_ids(torch.zeros(1, 4), 2).tolist() == [0]


def test_no_pwl_units_is_one_subregion():
    states = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    ids = symbolic.subregion_ids(states, 0)
    assert ids.shape == (200,) and ids.unique().tolist() == [0]
    graph = symbolic.transition_graph(ids, 0)
    assert graph.regions == [0] and graph.labels == ["-"]
    assert graph.counts.tolist() == [[199]] and graph.self_prob.tolist() == [1.0]
    # an actual P = 0 model: a linear map, one subregion out of 2^0
    model = lorenz.LorenzALRNN(3, 6, 0)
    truth = lorenz.lorenz63(300).float() / 10
    stats = lorenz.run_statistics(model, truth.double(), lorenz.free_run(model, truth, burn_in=10))
    assert stats["subregions_visited"] == 1 and stats["subregions_possible"] == 1


def test_transition_counts_hand_made_sequence():
    # P = 2 (regions 0..3); region 3 never visited
    seq = torch.tensor([0, 0, 1, 1, 1, 0, 2, 2, 0, 0])
    counts = symbolic.transition_counts(seq, 2)
    expected = np.zeros((4, 4), dtype=np.int64)
    for a, b in [(0, 0), (0, 1), (1, 1), (1, 1), (1, 0), (0, 2), (2, 2), (2, 0), (0, 0)]:
        expected[a, b] += 1
    assert counts.tolist() == expected.tolist()
    assert int(counts.sum()) == len(seq) - 1

    symbols, dwell = symbolic.symbolic_sequence(seq)
    assert symbols.tolist() == [0, 1, 0, 2, 0] and dwell.tolist() == [2, 3, 1, 2, 2]
    assert symbolic.region_counts(seq, 2).tolist() == [5, 3, 2, 0]

    g = symbolic.transition_graph(seq, 2)
    assert g.regions == [0, 1, 2] and g.labels == ["00", "10", "01"]
    assert np.allclose(g.occupancy, [0.5, 0.3, 0.2])
    assert g.counts.tolist() == [[2, 1, 1], [1, 2, 0], [1, 0, 1]]
    # self-transitions apart: P(stay) from the full rows, switches renormalised without them
    assert np.allclose(g.self_prob, [2 / 4, 2 / 3, 1 / 2])
    assert np.allclose(g.switch_prob, [[0, 0.5, 0.5], [1, 0, 0], [1, 0, 0]])
    saved = json.loads(json.dumps(g.to_dict()))
    assert saved["counts"] == g.counts.tolist() and saved["labels"] == g.labels


def test_region_never_left_has_zero_switch_row():
    g = symbolic.transition_graph(torch.tensor([1, 0, 0, 0]), 1)
    assert g.self_prob.tolist() == [1.0, 0.0]
    assert g.switch_prob.tolist() == [[0.0, 0.0], [1.0, 0.0]]


@pytest.mark.parametrize("relu_units", [0, 2, 4])
def test_plots_write_png(tmp_path, relu_units):
    gen = torch.Generator().manual_seed(relu_units)
    x = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, 2 ** relu_units, (500,), generator=gen)
    graph = symbolic.transition_graph(ids, relu_units)
    symbolic.plot_attractor_by_region(x, ids, relu_units, path=tmp_path / "attractor.png",
                                      title="test")
    symbolic.plot_transition_graph(graph, path=tmp_path / "graph.png", title="test")
    for name in ("attractor.png", "graph.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_pwl_sweep_writes_table(tmp_path, capsys):
    stats = lorenz.main(["--out", str(tmp_path), "--steps", "2", "--latent", "6",
                         "--relu-units", "2", "--tau", "5", "--batch", "2", "--train-len", "300",
                         "--eval-len", "300", "--pwl-units", "0,1,3", "--sweep-steps", "1"])
    saved = json.loads((tmp_path / "lorenz.json").read_text())
    sweep = saved["pwl_sweep"]
    assert sweep["steps_per_model"] == 1 and sweep["latent"] == 6
    assert [r["pwl_units"] for r in sweep["rows"]] == [0, 1, 3]
    for row in sweep["rows"]:
        assert {"d_stsp", "max_lyapunov", "subregions_visited", "final_loss"} <= set(row)
        assert row["subregions_possible"] == 2 ** row["pwl_units"]
        assert 1 <= row["subregions_visited"] <= row["subregions_possible"]
        assert len(row["transitions"]["regions"]) == row["subregions_visited"]
    assert sweep["rows"][0]["subregions_visited"] == 1
    assert sweep["paper_minimal"]["lorenz63"]["pwl_units"] == 2
    assert (tmp_path / "lorenz_pwl.png").stat().st_size > 0
    assert saved["trained"]["subregions_possible"] == 4
    assert stats["pwl_sweep"]["rows"][1]["pwl_units"] == 1
    printed = capsys.readouterr().out
    assert "subregions" in printed and "Lorenz-63 P = 2" in printed
