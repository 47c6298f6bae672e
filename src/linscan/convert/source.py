"""Where a model to convert comes from: a linscan checkpoint or a Hugging Face Llama folder."""

from __future__ import annotations

import json
from pathlib import Path

from ..models import LinscanForCausalLM


def load_source(path: str | Path) -> LinscanForCausalLM:
    """The model in ``path``, in eval mode: a folder whose ``config.json`` says ``model_type``
    ``"llama"`` is read with transformers (``from_llama``); anything else must be a linscan run,
    checkpoint or model folder. ValueError naming ``path`` otherwise."""
    from ..train import checkpoint
    from .llama import from_llama

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"source: expected a linscan checkpoint or a Hugging Face Llama folder, got {str(path)!r} "
                         "(not a folder)")
    config_file = path / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    except (ValueError, OSError, AttributeError):
        model_type = None
    if model_type == "llama":
        return from_llama(path)
    if model_type is not None:
        raise ValueError(f"source: {path} holds a Hugging Face {model_type!r} model; only 'llama' converts")
    try:
        return checkpoint.load_model(path)
    except checkpoint.CheckpointError as e:
        raise ValueError(f"source: {str(e).removeprefix('checkpoint: ')}") from e
