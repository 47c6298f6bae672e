"""Checkpoints: safetensors and JSON only, written so that a crash never loses the last one.

A run folder holds checkpoint folders ``step-000100/`` and a file ``latest`` naming the
newest. ``step-N`` is the state after exactly N optimiser updates. Each folder holds

- ``model.safetensors``: the weights (tied duplicates stored once);
- ``config.json``: the model configuration;
- ``trainer.json`` and ``trainer.safetensors``: the trainer state (step, optimiser,
  scheduler, RNG states) as JSON in which every tensor is replaced by
  ``{"__tensor__": name}`` and stored under that name in the safetensors file
  (tuples are ``{"__tuple__": [...]}``, dicts with int keys ``{"__items__": [[k, v], ...]}``).

Nothing is ever unpickled: a checkpoint is data, never code. Folders from before this
layout (``trainer.pt``, a pickle) still load for ``linscan generate`` but cannot be resumed.

``save`` writes every file into a fresh ``.tmp-*`` folder and fsyncs it, renames the folder
to ``step-N`` and fsyncs the run folder, replaces ``latest`` atomically (write, fsync,
rename), and only then prunes: the new checkpoint and the ``keep - 1`` newest older ones
stay. A crash or signal at any moment leaves ``latest`` naming a complete checkpoint, and a
``step-*`` folder is always complete (a folder is renamed to a hidden name before it is
deleted). One process writes to a run folder at a time.

``latest`` must name a folder directly inside its run folder: a name that is absolute, has
a separator or ``..``, or resolves (through links) elsewhere is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..models import LinscanConfig

FORMAT = 1                                   # trainer.json layout version
TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"
STEP_NAME = re.compile(r"step-(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, unsafe or does not match the model."""


# ---------------------------------------------------------------- files


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a rename is only as durable as its folder)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically: readers see the old or the new file, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        _fsync_write(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _discard(folder: Path) -> None:
    """Delete a folder, hiding it first so that no half-deleted ``step-*`` folder is ever seen."""
    hidden = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    os.replace(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


# ---------------------------------------------------------------- trainer state as JSON + tensors


def _encode(obj, tensors: dict[str, torch.Tensor], where: str):
    """``obj`` as JSON data; each tensor moves into ``tensors`` under its path and leaves a reference."""
    if isinstance(obj, torch.Tensor):
        name = where if where not in tensors else f"{where}#{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {TENSOR: name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, tensors, f"{where}.{i}") for i, v in enumerate(obj)]
        return {TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj) and not {TENSOR, TUPLE, ITEMS} & set(obj):
        return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, dict) and all(isinstance(k, (str, int)) for k in obj):
        return {ITEMS: [[k, _encode(v, tensors, f"{where}.{k}")] for k, v in obj.items()]}
    raise CheckpointError(f"checkpoint: cannot store {type(obj).__name__} at {where}: expected tensors, "
                          "numbers, strings, None, lists, tuples or dicts (keys str or int)")


def _decode(data, tensors: dict[str, torch.Tensor], where: str):
    """The inverse of ``_encode``; a reference to a tensor the file lacks is refused."""
    if isinstance(data, list):
        return [_decode(v, tensors, f"{where}.{i}") for i, v in enumerate(data)]
    if not isinstance(data, dict):
        return data
    if set(data) == {TENSOR}:
        if data[TENSOR] not in tensors:
            raise CheckpointError(f"checkpoint: trainer.json refers to tensor {data[TENSOR]!r} at {where}, "
                                  "which trainer.safetensors lacks")
        return tensors[data[TENSOR]]
    if set(data) == {TUPLE} and isinstance(data[TUPLE], list):
        return tuple(_decode(v, tensors, f"{where}.{i}") for i, v in enumerate(data[TUPLE]))
    if set(data) == {ITEMS}:
        pairs = data[ITEMS]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise CheckpointError(f"checkpoint: trainer.json at {where}: expected [[key, value], ...], "
                                  f"got {pairs!r:.80}")
        return {k: _decode(v, tensors, f"{where}.{k}") for k, v in pairs}
    return {k: _decode(v, tensors, f"{where}.{k}") for k, v in data.items()}


# ---------------------------------------------------------------- save


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (safetensors stores each tensor once)."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().contiguous().cpu()
    return out


def _write_folder(folder: Path, model, config: LinscanConfig, trainer_state: dict) -> None:
    """Every file of a checkpoint into ``folder``, each fsynced, then the folder itself."""
    tensors: dict[str, torch.Tensor] = {}
    state = _encode(trainer_state, tensors, "trainer")
    save_file(_weights(model), str(folder / "model.safetensors"))
    save_file(tensors, str(folder / "trainer.safetensors"))
    _fsync_write(folder / "config.json", json.dumps(config.to_dict(), indent=2).encode())
    _fsync_write(folder / "trainer.json", json.dumps({"format": FORMAT, "state": state}, indent=1).encode())
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(folder)


def save(run_dir: str | Path, model, config: LinscanConfig, trainer_state: dict, *, keep: int = 2) -> Path:
    """Write ``run_dir/step-N`` (N = ``trainer_state["step"]``), point ``latest`` at it, prune.

    The checkpoint ``latest`` named before is removed (by pruning) only once the new one is
    complete and ``latest`` names it. Returns the new folder.
    """
    step = trainer_state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint: trainer_state['step']: expected an int >= 0, got {step!r}")
    if keep < 1:
        raise CheckpointError(f"checkpoint: keep: expected at least 1, got {keep}")
    run_dir = Path(run_dir)
    name = f"step-{step:06d}"
    final = run_dir / name
    if final.exists() and latest(run_dir) == final:
        raise CheckpointError(f"checkpoint: {final} is the latest checkpoint; refusing to overwrite it")
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=run_dir))
    try:
        _write_folder(tmp, model, config, trainer_state)
        if final.exists():          # left by a crash before ``latest`` moved: nothing refers to it
            _discard(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(run_dir)
    replace_file(run_dir / "latest", name.encode())
    _prune(run_dir, step, keep)
    return final


def save_model(folder: str | Path, model) -> Path:
    """Write a model folder (``config.json`` + ``model.safetensors``, no trainer state) that
    ``load_model``, ``linscan generate --ckpt`` and ``linscan eval`` read. Written into a fresh
    ``.tmp-*`` folder, fsynced, then renamed: ``folder`` is complete or absent; an existing
    model folder there is replaced. Returns ``folder``."""
    folder = Path(folder)
    if folder.exists() and not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"checkpoint: {folder} exists and is not a model folder; refusing to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        save_file(_weights(model), str(tmp / "model.safetensors"))
        _fsync_write(tmp / "config.json", json.dumps(model.config.to_dict(), indent=2).encode())
        with open(tmp / "model.safetensors", "rb") as fh:
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if folder.exists():
            _discard(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(folder.parent)
    return folder


def _prune(run_dir: Path, step: int, keep: int) -> None:
    """Keep ``step-<step>`` and the ``keep - 1`` newest older checkpoints; drop the rest and any leftovers.

    Checkpoints numbered above ``step`` are from a timeline this run abandoned (a crash
    came between their rename and ``latest``), so they go too.
    """
    numbered = sorted((int(m.group(1)), p) for p in run_dir.glob("step-*")
                      if (m := STEP_NAME.fullmatch(p.name)) and p.is_dir())
    older = [p for s, p in numbered if s < step]
    newer = [p for s, p in numbered if s > step]
    for folder in older[: max(0, len(older) - (keep - 1))] + newer:
        _discard(folder)
    for leftover in [*run_dir.glob(".tmp-step-*"), *run_dir.glob(".trash-step-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


# ---------------------------------------------------------------- load


def latest(run_dir: str | Path) -> Path | None:
    """The checkpoint folder ``run_dir/latest`` names (None without ``latest``), confined to ``run_dir``."""
    run_dir = Path(run_dir)
    pointer = run_dir / "latest"
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint: cannot read {pointer}: {e}") from e
    plain = bool(name) and name not in (".", "..") and Path(name).name == name and "\\" not in name
    if not plain or (run_dir / name).resolve().parent != run_dir.resolve():
        raise CheckpointError(f"checkpoint: {pointer}: expected the name of a checkpoint folder inside "
                              f"{run_dir} (like step-000100), got {name!r}")
    return run_dir / name


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from itself or from a run folder holding ``latest``."""
    path = Path(path)
    path = latest(path) or path
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


def load_model(path: str | Path):
    """The ``LinscanForCausalLM`` of a run folder, checkpoint folder or model folder, in eval mode."""
    from ..models import LinscanForCausalLM

    model = LinscanForCausalLM(load_config(path))
    load_weights(path, model)
    return model.eval()


def load_trainer_state(path: str | Path) -> dict:
    """The trainer state ``save`` stored (tensors on the CPU); ``state["step"]`` matches the folder name."""
    path = resolve(path)
    if not (path / "trainer.json").is_file():
        if (path / "trainer.pt").exists():
            raise CheckpointError(f"checkpoint: {path} holds trainer.pt, a pickle from an older linscan, which "
                                  "is never loaded (unpickling can run code): this run cannot be resumed")
        raise CheckpointError(f"checkpoint: no trainer.json under {path}")
    try:
        data = json.loads((path / "trainer.json").read_text())
        tensors = load_file(str(path / "trainer.safetensors"))
    except (OSError, ValueError, RecursionError, SafetensorError) as e:
        raise CheckpointError(f"checkpoint: cannot read the trainer state in {path}: {e}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path / 'trainer.json'}: expected format {FORMAT}, "
                              f"got {data.get('format') if isinstance(data, dict) else data!r:.80}")
    state = _decode(data.get("state"), tensors, "trainer")
    step = state.get("step") if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint: {path / 'trainer.json'}: expected a step >= 0, got {step!r}")
    m = STEP_NAME.fullmatch(path.name)
    if m and int(m.group(1)) != step:
        raise CheckpointError(f"checkpoint: {path} is labelled step {int(m.group(1))} but holds step {step}")
    return state
