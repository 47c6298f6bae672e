"""linscan.eval: mixer names, buckets, the training/evaluation runner, the report files and the CLI."""

import json

import pytest
import torch
from torch import nn

from linscan.cli import main
from linscan.eval import (NAMES, PRESETS, buckets, evaluate, format_table, get_preset, parse_mixer, parse_mixers, run,
                          scored_logits)
from linscan.eval.runner import build_model
from linscan.models import LinscanConfig


class PreviousToken:
    """Fake task: tokens 1..V-1; the label at position t >= 1 is the input at t - 1 (every other
    position scored, so alignment and masking matter); right-padded with 0 / -100."""

    name = "previous_token"
    pad_id = 0
    vocab_size = 6
    train_lengths = (4, 12)
    test_lengths = (12, 24)

    def sample(self, n, lengths=None, *, seed=0):
        lo, hi = lengths or self.train_lengths
        gen = torch.Generator().manual_seed(seed)
        row_lengths = torch.randint(lo, hi + 1, (n,), generator=gen)
        T = int(row_lengths.max())
        ids = torch.randint(1, self.vocab_size, (n, T), generator=gen)
        labels = torch.full((n, T), -100)
        labels[:, 1::2] = ids[:, :-1][:, 0::2][:, : labels[:, 1::2].shape[1]]
        pad = torch.arange(T)[None] >= row_lengths[:, None]
        ids[pad], labels[pad] = 0, -100
        return ids, labels

    def lengths_of(self, input_ids):
        return (input_ids != 0).sum(1)


# ---------------------------------------------------------------- mixer names

def test_single_names_map_to_letters_and_valid_options():
    assert parse_mixer("deltanet").pattern == "E" and parse_mixer("deltanet").mixer_options == {}
    assert parse_mixer("deltanet_neg").mixer_options == {"deltanet": {"allow_neg_eigval": True}}
    assert parse_mixer("deltaproduct2_neg").mixer_options == {
        "deltaproduct": {"n_householder": 2, "allow_neg_eigval": True}}
    assert parse_mixer("gated_deltanet_neg").pattern == "D"
    for name in NAMES:           # every option is one the mixer accepts (LinscanConfig validates them)
        spec = parse_mixer(name)
        LinscanConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, pattern=spec.pattern,
                      mixer_options=spec.mixer_options)


def test_hybrids_and_depth():
    spec = parse_mixer("gated_deltanet+attention 3:1")
    assert spec.pattern == "DDDA" and spec.name == "gated_deltanet+attention 3:1"
    assert [spec.n_layers(d) for d in (1, 4, 5)] == [4, 4, 8]
    spec = parse_mixer(" gated_deltanet_neg + attention ")
    assert spec.pattern == "DA" and spec.mixer_options == {"gated_deltanet": {"allow_neg_eigval": True}}
    assert parse_mixer("deltaproduct2_neg+gla 1:2").pattern == "PGG"
    specs = parse_mixers("deltanet, gated_deltanet+attention 3:1,deltanet")
    assert [s.name for s in specs] == ["deltanet", "gated_deltanet+attention 3:1"]


@pytest.mark.parametrize("text, message", [
    ("deltanett", "unknown mixer 'deltanett'; expected one of deltanet, deltanet_neg, gated_deltanet"),
    ("gated_deltanet+mamba 3:1", "unknown mixer 'mamba'"),
    ("deltanet+deltanet_neg", "two different mixer modules"),
    ("gla+attention 0:1", "ratio R:S of positive integers"),
    ("gla+attention 3-1", "unknown mixer"),
])
def test_bad_names(text, message):
    with pytest.raises(ValueError, match="mixers: ") as info:
        parse_mixer(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_buckets_and_presets():
    assert buckets((3, 40), (40, 256), 4) == [(3, 40), (40, 93), (94, 147), (148, 201), (202, 256)]
    assert buckets((2, 4), (5, 6), 4) == [(2, 4), (5, 5), (6, 6)]
    assert get_preset("parity", steps=7, lr=None).steps == 7 and get_preset("parity").lr == 3e-3
    with pytest.raises(ValueError, match="steps: expected a positive integer, got 0"):
        get_preset("parity", steps=0)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['step'\]"):
        get_preset("parity", step=3)


# ---------------------------------------------------------------- runner pieces

def test_scored_logits_equal_the_full_forward():
    spec = parse_mixer("gated_deltanet_neg+attention 1:1")
    model = build_model(spec, get_preset("parity", d_model=32), vocab_size=6, seed=0).eval()
    ids, labels = PreviousToken().sample(3, (5, 9), seed=1)
    mask = labels != -100
    with torch.no_grad():
        torch.testing.assert_close(scored_logits(model, ids, mask), model(ids).logits[mask])


class CopyCurrent(nn.Module):
    """A stand-in model that predicts the current input token (one-hot embedding and head)."""

    def __init__(self, vocab):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(torch.eye(vocab))
        self.blocks = nn.ModuleList()
        self.norm = nn.Identity()
        self.head = nn.Linear(vocab, vocab, bias=False)
        self.head.weight.data = torch.eye(vocab)

    def embed_tokens(self, ids):
        return self.embed(ids)

    def forward(self, ids):
        raise AssertionError("evaluate must go through scored_logits")


def test_evaluate_counts_scored_positions_and_whole_sequences():
    task = PreviousToken()
    result = evaluate(CopyCurrent(task.vocab_size), task, [(4, 12), (12, 24)], n=50)
    for i, bucket in enumerate(result):       # independent count: right where input[t] == input[t-1]
        ids, labels = task.sample(50, tuple(bucket["lengths"]), seed=2**40 + i)
        mask = labels != -100
        hit = (ids == labels) | ~mask
        assert bucket["acc"] == pytest.approx((ids == labels)[mask].float().mean().item())
        assert bucket["seq_acc"] == pytest.approx(hit.all(1).float().mean().item())
        assert 0.05 < bucket["acc"] < 0.4 and bucket["n"] == 50


# ---------------------------------------------------------------- end to end

def test_run_writes_results_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    results = run(PreviousToken(), ["deltanet_neg+attention 1:1", "gla"], steps=10, seeds=1, d_model=16,
                  n_layers=1, batch_size=4, eval_sequences=8, out=out)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["buckets"] == [[4, 12], [12, 14], [15, 17], [18, 20], [21, 24]]
    assert saved["config"]["steps"] == 10 and saved["config"]["train_lengths"] == [4, 12]
    assert list(saved["mixers"]) == ["deltanet_neg+attention 1:1", "gla"]
    entry = saved["mixers"]["deltanet_neg+attention 1:1"]
    assert entry["pattern"] == "EA" and entry["n_layers"] == 2
    assert entry["mixer_options"] == {"deltanet": {"allow_neg_eigval": True}}
    (r,) = entry["runs"]
    assert r["steps"] == 10 and r["final_loss"] > 0 and len(r["buckets"]) == 5
    assert all(0 <= b["acc"] <= 1 and b["n"] == 8 for b in r["buckets"])
    assert entry["summary"]["acc_mean"] == [b["acc"] for b in r["buckets"]]
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(results)
    assert "4-12*" in table and "21-24" in table and table.count("\n") == 3
    assert "step 10/10 loss" in capsys.readouterr().err


def test_learning_check_previous_token():
    # fails if training does not learn, or if training and evaluation disagree on label alignment
    results = run(PreviousToken(), ["attention"], steps=60, seeds=1, d_model=32, n_layers=1, batch_size=32,
                  lr=1e-2, eval_sequences=64, progress=False)
    summary = results["mixers"]["attention"]["summary"]
    assert min(summary["acc_mean"][:2]) > 0.95, summary["acc_mean"]


def test_cli_eval_parity(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["eval", "parity", "--mixers", "deltanet_neg", "--steps", "3", "--train-len", "3..8",
               "--test-len", "8..16", "--batch-size", "4", "--eval-sequences", "8", "--d-model", "16", "--seeds", "2",
               "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "parity: accuracy on scored positions, mean over 2 seed(s) [min-max]" in captured.out
    assert "3-8*" in captured.out and "wall time" in captured.out
    saved = json.loads((out / "results.json").read_text())
    assert saved["task"] == "parity" and len(saved["mixers"]["deltanet_neg"]["runs"]) == 2
    assert (out / "accuracy.png").is_file()


@pytest.mark.parametrize("argv, code, message", [
    (["eval", "parity", "--mixers", "deltanet,nope"], 1, "unknown mixer 'nope'"),
    (["eval", "nosuchtask", "--mixers", "deltanet"], 1, "TASK: expected one of a5, arith, arith_brackets, mqar, "
                                                       "parity, s3, s5, got 'nosuchtask'"),
    (["eval", "mqar", "--mixers", "gla", "--task-option", "pairs=4"], 1, "unknown option(s) ['pairs']"),
    (["eval", "parity", "--mixers", "gla", "--train-len", "40..3"], 2, "expected a length range LO..HI"),
])
def test_cli_errors(argv, code, message, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code and message in err and err.count("\n") == 1, err


def test_presets_supply_mixers_lengths_and_task_options(tmp_path, capsys):
    # `linscan eval TASK` with no options runs the preset's comparison on the preset's lengths and task
    tiny = dict(steps=2, batch_size=4, eval_sequences=4, d_model=16, n_layers=1)
    rc = main(["eval", "s3", "--steps", "2", "--batch-size", "4", "--eval-sequences", "4", "--d-model", "16",
               "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "results.json").read_text())
    preset = get_preset("s3")
    assert list(saved["mixers"]) == list(preset.mixers)
    assert saved["config"]["train_lengths"] == list(preset.train_lengths)
    assert saved["buckets"][-1][1] == preset.test_lengths[1]
    results = run("mqar", ["attention"], progress=False, **tiny)
    assert results["config"]["vocab_size"] == get_preset("mqar").task_options["vocab_size"]
    assert results["task_options"]["num_pairs"] == 4
    results = run("mqar", ["attention"], task_options={"num_pairs": 8}, train_lengths=(32, 40),
                  test_lengths=(40, 48), progress=False, **tiny)
    assert results["task_options"] == {"vocab_size": 64, "num_pairs": 8}     # the caller's win, the rest kept
    assert results["config"]["train_lengths"] == [32, 40]


def test_every_preset_names_a_comparison_of_known_mixers():
    for name, preset in PRESETS.items():
        assert len(preset.mixers) >= 2, name
        for mixer in preset.mixers:
            parse_mixer(mixer)


def test_head_dim_sets_every_mixers_state_size():
    """--head-dim (EvalPreset.head_dim) reaches the recurrent state: K x V per head of every layer."""
    preset = get_preset("mqar", head_dim=4, n_heads=4)
    model = build_model(parse_mixer("gated_deltanet+attention 1:1"), preset, vocab_size=16, seed=0)
    assert [b.mixer.head_dim for b in model.blocks] == [4, 4]
    _, state = model(torch.randint(0, 16, (1, 5)))[:2]
    assert list(state[0]["S"].shape) == [1, 4, 4, 8]          # gated_deltanet: K = 4, V = 2 K
    with pytest.raises(ValueError, match="head_dim"):
        get_preset("mqar", head_dim=0)


def test_eval_cli_heads_and_head_dim_options(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "mqar", "--head-dim", "0"])
    assert "--head-dim" in capsys.readouterr().err
