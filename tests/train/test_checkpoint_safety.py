"""Checkpoints are data, never code; a save never loses the last complete one; a step number
names exactly that many updates; Ctrl-C (real SIGINTs, in-process), divergence and bad
resumes end in a clean state and a one-line error."""

import json
import os
import pickle
import re
import signal
from pathlib import Path

import pytest
import torch

from linscan.cli import main
from linscan.models import LinscanForCausalLM, preset
from linscan.models.config import PRESETS
from linscan.train import CheckpointError, TrainArgs, checkpoint, loop, train
from linscan.train.loop import TrainingDiverged

from .corpus import write_corpus

MICRO = dict(d_model=32, n_layers=2, n_heads=2, pattern="DA", mlp_ratio=2.0)


@pytest.fixture(autouse=True)
def micro_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "micro", MICRO)


def micro_args(out, text_file, **kw):
    base = dict(preset="micro", data=str(text_file), steps=6, batch_size=2, seq_len=16, eval_every=3,
                eval_batches=1, ckpt_every=3, warmup=2, out=str(out), progress=False)
    return TrainArgs(**(base | kw))


def resumed(args, **kw):
    return TrainArgs(**{**args.__dict__, "resume": True, **kw})


def latest_name(out):
    return (Path(out) / "latest").read_text()


def rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Metrics rows of an uninterrupted 6-step run."""
    tmp = tmp_path_factory.mktemp("reference")
    text = write_corpus(tmp / "corpus.txt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PRESETS, "micro", MICRO)
        train(micro_args(tmp / "run", text))
    return rows(tmp / "run")


class Marker:
    """A pickle that, when loaded, writes a marker file: what an attacker's trainer.pt would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def sigint_when(monkeypatch, target, name, at, signals=1):
    """Send ``signals`` real SIGINTs to this process during the ``at``-th call of ``target.name``."""
    real = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*a, **k):
        calls["n"] += 1
        if calls["n"] == at:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(target, name, wrapper)


def stopped_at_3(args):
    """Train ``args`` until a SIGINT during its first checkpoint write (step 3) stops it."""
    with pytest.MonkeyPatch.context() as mp:
        sigint_when(mp, checkpoint, "save_file", 1)
        with pytest.raises(KeyboardInterrupt):
            train(args)
    assert latest_name(args.out) == "step-000003"


# ---------------------------------------------------------------- no code on a load path


def test_pickled_trainer_state_is_refused_and_runs_nothing(tmp_path, text_file):
    args = micro_args(tmp_path / "run", text_file, steps=3)
    train(args)
    folder = Path(args.out) / latest_name(args.out)
    marker = tmp_path / "pwned"
    for name in ("trainer.json", "trainer.safetensors"):
        (folder / name).unlink(missing_ok=True)
    (folder / "trainer.pt").write_bytes(pickle.dumps({"step": Marker(marker)}))
    with pytest.raises(CheckpointError, match="trainer.pt, a pickle .* never loaded"):
        train(resumed(args, steps=6))
    # a pickle in the safetensors file's place is not unpickled either
    (folder / "trainer.json").write_text(json.dumps({"format": 1, "state": {"step": 3}}))
    (folder / "trainer.safetensors").write_bytes(pickle.dumps(Marker(marker)))
    with pytest.raises(CheckpointError, match="cannot read the trainer state"):
        checkpoint.load_trainer_state(args.out)
    assert not marker.exists()


def test_resume_never_unpickles(tmp_path, text_file, reference, monkeypatch):
    args = micro_args(tmp_path / "run", text_file)
    stopped_at_3(args)

    def forbidden(*a, **k):
        raise AssertionError("unpickling on a load path")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, forbidden)
    train(resumed(args))
    assert rows(args.out) == reference


@pytest.mark.parametrize("target", ["../elsewhere/step-000003", "/tmp/step-000003", "step-000003/../../x",
                                    "link", "", ".."])
def test_latest_must_stay_inside_its_run_folder(tmp_path, text_file, target):
    args = micro_args(tmp_path / "run", text_file, steps=3)
    train(args)
    run = Path(args.out)
    os.symlink(tmp_path / "elsewhere", run / "link")           # a link out of the folder counts as outside
    (tmp_path / "elsewhere").mkdir()
    (run / "latest").write_text(target)
    expected = f"latest: expected the name of a checkpoint folder inside .*got {re.escape(repr(target))}"
    with pytest.raises(CheckpointError, match=expected):
        checkpoint.resolve(run)
    with pytest.raises(CheckpointError, match="inside"):
        train(resumed(args, steps=6))


def test_trainer_state_round_trips_exactly(tmp_path):
    model = LinscanForCausalLM(preset("micro"))
    state = {"step": 7, "tuple": (0.9, 0.95), "ints": {0: torch.arange(3), 1: torch.tensor(2.5)},
             "nested": [{"a": None, "b": True, "c": "s"}], "rng": torch.get_rng_state(), "nan": float("nan")}
    checkpoint.save(tmp_path, model, model.config, state)
    back = checkpoint.load_trainer_state(tmp_path)
    assert back["tuple"] == (0.9, 0.95) and back["nested"] == state["nested"] and back["step"] == 7
    assert torch.equal(back["ints"][0], state["ints"][0]) and torch.equal(back["rng"], state["rng"])
    assert back["ints"][1].dtype == torch.float32 and back["nan"] != back["nan"]
    with pytest.raises(CheckpointError, match="cannot store object at trainer.bad"):
        checkpoint.save(tmp_path, model, model.config, {"step": 8, "bad": object()})
    assert latest_name(tmp_path) == "step-000007"
    (tmp_path / "step-000007").rename(tmp_path / "step-000009")
    (tmp_path / "latest").write_text("step-000009")
    with pytest.raises(CheckpointError, match="labelled step 9 but holds step 7"):
        checkpoint.load_trainer_state(tmp_path)


# ---------------------------------------------------------------- the save protocol


@pytest.mark.parametrize("fail_at", ["weights", "trainer", "rename", "latest", "prune"])
def test_a_crash_at_any_point_of_a_save_keeps_a_complete_latest(tmp_path, monkeypatch, fail_at):
    model = LinscanForCausalLM(preset("micro"))
    for step in (1, 2):
        checkpoint.save(tmp_path, model, model.config, {"step": step})
    calls = {"weights": ("save_file", 0), "trainer": ("save_file", 1), "rename": ("replace", 0),
             "latest": ("replace", 1), "prune": ("_discard", 0)}
    target, nth = calls[fail_at]
    real = {"save_file": checkpoint.save_file, "replace": checkpoint.os.replace, "_discard": checkpoint._discard}
    count = {"n": 0}

    def crash(*a, **k):
        count["n"] += 1
        if count["n"] - 1 == nth:
            raise KeyboardInterrupt("crash")
        return real[target](*a, **k)

    monkeypatch.setattr(checkpoint.os if target == "replace" else checkpoint, target, crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, model, model.config, {"step": 3})
    monkeypatch.undo()
    step = checkpoint.load_trainer_state(tmp_path)["step"]
    assert step == (3 if fail_at == "prune" else 2)
    checkpoint.load_weights(tmp_path, model)
    for folder in tmp_path.glob("step-*"):           # every visible checkpoint is complete and labelled right
        assert checkpoint.load_trainer_state(folder)["step"] == int(folder.name[5:])
    checkpoint.save(tmp_path, model, model.config, {"step": 4})
    newest_older = 3 if fail_at in ("latest", "prune") else 2     # step-000003 was complete in both
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", f"step-{newest_older:06d}", "step-000004"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_latest_checkpoint_is_never_overwritten(tmp_path):
    model = LinscanForCausalLM(preset("micro"))
    checkpoint.save(tmp_path, model, model.config, {"step": 1})
    with pytest.raises(CheckpointError, match="is the latest checkpoint; refusing to overwrite it"):
        checkpoint.save(tmp_path, model, model.config, {"step": 1})


def test_fresh_train_into_an_existing_run_refuses_and_deletes_nothing(tmp_path, text_file):
    args = micro_args(tmp_path / "run", text_file, steps=3)
    train(args)
    before = sorted(p.name for p in Path(args.out).iterdir())
    with pytest.raises(ValueError, match=r"already holds a run \(latest, metrics.jsonl, step-000003\); "
                                         r"continue it with --resume"):
        train(micro_args(tmp_path / "run", text_file, steps=6))
    assert sorted(p.name for p in Path(args.out).iterdir()) == before
    assert latest_name(args.out) == "step-000003"


# ---------------------------------------------------------------- Ctrl-C: real SIGINTs in this process


@pytest.mark.parametrize("where, signals, saved, latest", [
    ("step", 1, "interrupted: saved", "step-000002"),       # in step 2: it finishes, is saved as step 2
    ("save", 1, "interrupted: saved", "step-000003"),       # during the periodic save at 3: it completes
    ("save", 3, "interrupted: saved", "step-000003"),       # three during that save: nothing breaks
    ("step", 2, "interrupted during step 5", "step-000003"),  # two in step 5: stop now, keep step 3
])
def test_sigint_then_resume_equals_uninterrupted(tmp_path, text_file, reference, capsys,
                                                 where, signals, saved, latest):
    args = micro_args(tmp_path / "run", text_file)
    handler = signal.getsignal(signal.SIGINT)   # Python's default, or SIG_IGN under nohup / a background job
    with pytest.MonkeyPatch.context() as mp:
        if where == "step":
            sigint_when(mp, loop, "batch_at", 2 if signals == 1 else 5 + 1, signals)  # + 1: the eval at step 3
        else:
            sigint_when(mp, checkpoint, "save_file", 1, signals)
        with pytest.raises(KeyboardInterrupt):
            train(args)
    assert saved in capsys.readouterr().err
    assert latest_name(args.out) == latest
    assert checkpoint.load_trainer_state(args.out)["step"] == int(latest[5:])
    assert signal.getsignal(signal.SIGINT) is handler      # the training loop put it back
    train(resumed(args))
    assert rows(args.out) == reference


def test_metrics_rows_after_the_checkpoint_are_dropped_on_resume(tmp_path, text_file, reference):
    args = micro_args(tmp_path / "run", text_file)
    stopped_at_3(args)
    with open(Path(args.out) / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "train_bpb": 0.0}) + "\n" + '{"step": 5, "tra')   # then a crash
    train(resumed(args))
    assert rows(args.out) == reference


# ---------------------------------------------------------------- divergence, impossible resumes


def test_non_finite_loss_stops_naming_the_step_and_keeps_finite_checkpoints(tmp_path, text_file):
    args = micro_args(tmp_path / "run", text_file, steps=20, lr=1e6, ckpt_every=1)
    expected = r"^training diverged at step (\d+): expected a finite loss .*got loss nan"
    with pytest.raises(TrainingDiverged, match=expected) as info:
        train(args)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    step = int(re.search(r"step (\d+)", str(info.value)).group(1))
    run = Path(args.out)
    assert latest_name(run) == f"step-{step - 1:06d}"
    for folder in run.glob("step-*"):
        weights = checkpoint.load_file(str(folder / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())
    assert [r["step"] for r in rows(run)] == list(range(1, step))


def test_cli_resume_of_a_finished_run_is_a_one_line_error(tmp_path, text_file, capsys):
    argv = ["train", "--preset", "micro", "--data", str(text_file), "--steps", "3", "--batch-size", "2",
            "--seq-len", "16", "--eval-every", "3", "--out", str(tmp_path / "run"), "--sample", "0"]
    assert main(argv) == 0
    capsys.readouterr()
    for steps in ("3", "2"):
        assert main([*argv, "--resume", "--steps", steps]) == 1
        err = capsys.readouterr().err
        assert f"the run in {tmp_path / 'run'} is already at step 3 (step-000003), so --steps {steps} " in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "--lr", "1e6", "--out", str(tmp_path / "nan"), "--steps", "20"]) == 1
    err = capsys.readouterr().err.strip().splitlines()       # the banner line, then the error
    assert err[-1].startswith("linscan: error: training diverged at step") and "Traceback" not in "".join(err)
