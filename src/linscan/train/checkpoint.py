"""Atomic checkpoints: safetensors weights, JSON config, trainer state.

A checkpoint is a folder ``step-000100/`` holding ``model.safetensors``,
``config.json`` and ``trainer.pt`` (optimizer, scheduler, RNG states, step).
It is written under a temporary name, every file fsynced, then renamed into
place, and the run folder's ``latest`` file (replaced atomically) names it:
a crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..models import LinscanConfig


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the model."""


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (safetensors stores each tensor once)."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().contiguous().cpu()
    return out


def save(run_dir: str | Path, model, config: LinscanConfig, trainer_state: dict, *, keep: int = 2) -> Path:
    """Write ``run_dir/step-XXXXXX`` atomically and point ``run_dir/latest`` at it."""
    run_dir = Path(run_dir)
    name = f"step-{trainer_state['step']:06d}"
    tmp = run_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_weights(model), str(tmp / "model.safetensors"))
    _fsync_write(tmp / "config.json", json.dumps(config.to_dict(), indent=2).encode())
    torch.save(trainer_state, tmp / "trainer.pt")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final = run_dir / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_write(run_dir / ".latest.tmp", name.encode())
    os.replace(run_dir / ".latest.tmp", run_dir / "latest")
    for old in sorted(run_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from itself or from a run folder holding ``latest``."""
    path = Path(path)
    if (path / "latest").is_file():
        path = path / (path / "latest").read_text().strip()
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise CheckpointError(f"checkpoint: no model.safetensors and config.json under {path}")
    return path


def load_config(path: str | Path) -> LinscanConfig:
    path = resolve(path)
    try:
        return LinscanConfig.load(path / "config.json")
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint: bad config.json in {path}: {e}") from e


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load weights into ``model``, refusing any missing, unexpected or mis-shaped tensor."""
    path = resolve(path)
    try:
        weights = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint: cannot read {path / 'model.safetensors'}: {e}") from e
    expected = _weights(model)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    shapes = [f"{n}: {list(weights[n].shape)} vs model {list(t.shape)}"
              for n, t in expected.items() if n in weights and weights[n].shape != t.shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"checkpoint: {path} does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
    model.load_state_dict(weights, strict=False)   # tied duplicates were not stored; all others checked above


def load_trainer_state(path: str | Path) -> dict:
    path = resolve(path)
    try:
        return torch.load(path / "trainer.pt", weights_only=False)
    except Exception as e:  # noqa: BLE001  (torch.load raises many kinds on corrupt files)
        raise CheckpointError(f"checkpoint: cannot read {path / 'trainer.pt'}: {e}") from e
