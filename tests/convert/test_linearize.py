"""``linscan linearize`` end to end on a tiny byte-level teacher trained in-process: convert, score,
LoRA fine-tune, merge, save; resuming the fine-tune; convert-only for a non-byte-level model; and
one-line errors (exit status 1) that name the option for what cannot run."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from linscan import cli  # noqa: E402
from linscan.models import LinscanConfig, LinscanForCausalLM  # noqa: E402
from linscan.train import checkpoint  # noqa: E402
from linscan.train.loop import TrainArgs, train  # noqa: E402

SMALL = dict(d_model=32, n_layers=2, pattern="A", n_heads=2, mixer_options={"attention": {"n_kv_heads": 1}})
FAST = ["--batch-size", "2", "--seq-len", "32", "--eval-every", "3", "--eval-batches", "1", "--ckpt-every", "3",
        "--window", "8", "--lora-rank", "2", "--device", "cpu", "--no-progress"]
REPORT_KEYS = {"teacher_val_bpb", "converted_val_bpb", "finetuned_val_bpb", "unigram_bpb", "recovery",
               "lora_parameters", "parameters", "teacher_parameters", "pattern", "tokens"}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A run folder of a small byte-level attention model after 4 training steps."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    torch.manual_seed(0)
    model = LinscanForCausalLM(LinscanConfig(vocab_size=256, **SMALL))
    train(TrainArgs(steps=4, batch_size=2, seq_len=32, eval_every=2, eval_batches=1, ckpt_every=4, out=str(out),
                    progress=False, device="cpu"), model=model)
    assert checkpoint.latest(out).name == "step-000004"
    return str(out)


def run(capsys, *argv):
    """``linscan linearize ...`` in this process: (exit status, stdout, stderr)."""
    status = cli.main(["linearize", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_linearize_fine_tunes_merges_and_resumes(teacher, tmp_path, capsys):
    out = tmp_path / "out"
    status, stdout, err = run(capsys, "--from", teacher, "--steps", "3", "--out", str(out), *FAST)
    assert status == 0, err
    report = json.loads((out / "linearize.json").read_text())
    assert json.loads(stdout) == report
    assert REPORT_KEYS <= set(report)
    teacher_model = checkpoint.load_model(teacher)
    model = checkpoint.load_model(out / "model")
    assert model.config.pattern == "II" and model.config.n_layers == 2
    assert model.num_parameters() == teacher_model.num_parameters() == report["parameters"]
    # rank 2 on q [32 -> 32], k, v [32 -> 16], two layers
    assert report["lora_parameters"] == 2 * (2 * (32 + 32) + 2 * 2 * (32 + 16))
    assert report["tokens"] == 3 * 2 * 32
    for key in ("teacher_val_bpb", "converted_val_bpb", "finetuned_val_bpb", "recovery"):
        assert isinstance(report[key], float) and report[key] == report[key], key
    # only the adapters trained: after the merge, q, k, v moved and every other tensor is the teacher's
    theirs = teacher_model.state_dict()
    for name, tensor in model.state_dict().items():
        moved = not torch.equal(tensor, theirs[name])
        assert moved == name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")), name
    assert checkpoint.latest(out / "finetune").name == "step-000003"
    assert checkpoint.load_trainer_state(out / "finetune")["step"] == 3

    # the same command again without --resume: refused, nothing touched
    before = (out / "model" / "model.safetensors").read_bytes()
    status, _, err = run(capsys, "--from", teacher, "--steps", "3", "--out", str(out), *FAST)
    assert status == 1
    assert "--resume" in err and "Traceback" not in err
    assert (out / "model" / "model.safetensors").read_bytes() == before

    # --resume continues the fine-tune from step 3
    status, _, err = run(capsys, "--from", teacher, "--steps", "4", "--resume", "--out", str(out), *FAST)
    assert status == 0, err
    assert checkpoint.latest(out / "finetune").name == "step-000004"
    assert json.loads((out / "finetune" / "summary.json").read_text())["start_step"] == 3
    rows = [json.loads(line)["step"] for line in (out / "finetune" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4]
    resumed = json.loads((out / "linearize.json").read_text())
    assert resumed["tokens"] == 4 * 2 * 32
    assert (out / "model" / "model.safetensors").read_bytes() != before


@pytest.fixture
def vocab64(tmp_path) -> str:
    """A model folder of a non-byte-level model (vocab 64), as from_llama would give."""
    torch.manual_seed(1)
    return str(checkpoint.save_model(tmp_path / "v64", LinscanForCausalLM(LinscanConfig(vocab_size=64, **SMALL))))


def test_convert_only_for_other_vocabularies(vocab64, tmp_path, capsys):
    out = tmp_path / "out"
    status, _, err = run(capsys, "--from", vocab64, "--steps", "0", "--to", "gated_deltanet", "--window", "0",
                         "--keep-attention", "2", "--out", str(out), "--device", "cpu", "--no-progress")
    assert status == 0, err
    model = checkpoint.load_model(out / "model")
    assert model.config.pattern == "IA"
    assert model.config.mixer_options["liger"] == {"n_kv_heads": 1, "recurrence": "gated_deltanet",
                                                        "window": None, "recurrent_weight": 0.5}
    source = checkpoint.load_model(vocab64)
    for name, tensor in source.state_dict().items():      # converted only: every tensor as it was
        assert torch.equal(model.state_dict()[name], tensor), name
    report = json.loads((out / "linearize.json").read_text())
    assert "teacher_val_bpb" not in report and "lora_parameters" not in report
    assert not (out / "finetune").exists()


def test_fine_tuning_needs_a_byte_level_model(vocab64, tmp_path, capsys):
    status, _, err = run(capsys, "--from", vocab64, "--steps", "2", "--out", str(tmp_path / "out"), *FAST)
    assert status == 1
    assert err.startswith("linscan: error: --steps: ") and len(err.strip().splitlines()) == 1
    assert "vocab 64" in err and "--steps 0" in err
    assert not (tmp_path / "out").exists()


def test_bad_source(tmp_path, capsys):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"\0" * 16)
    status, _, err = run(capsys, "--from", str(file), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert status == 1
    assert err.startswith("linscan: error: --from: ") and "weights.bin" in err and "not a folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, err = run(capsys, "--from", str(empty), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert status == 1
    assert err.startswith("linscan: error: --from: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_resume_with_other_options_is_a_clean_error(teacher, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--from", teacher, "--out", str(out), *FAST]
    assert run(capsys, *argv, "--steps", "1")[0] == 0
    status, _, err = run(capsys, *argv, "--steps", "2", "--resume", "--to", "hgrn2")
    assert status == 1 and "--resume" in err


def test_missing_data_is_a_clean_error(teacher, tmp_path, capsys):
    status, _, err = run(capsys, "--from", teacher, "--data", str(tmp_path / "no_such.txt"), "--steps", "1",
                         "--out", str(tmp_path / "out"), *FAST)
    assert status == 1 and err.startswith("linscan: error: --data: ")


def test_too_long_seq_len_names_the_option(teacher, tmp_path, capsys):
    data = tmp_path / "small.txt"
    data.write_bytes(b"0123456789" * 100)              # validation split: 50 bytes
    status, _, err = run(capsys, "--from", teacher, "--data", str(data), "--steps", "1", "--out",
                         str(tmp_path / "out"), *FAST, "--seq-len", "100")     # the last --seq-len counts
    assert status == 1
    assert err.startswith("linscan: error: --seq-len: ")
