"""LoRA adapters through peft (optional extra ``lora``): add them, count them, merge them away.

The adapters go into the model in place (``peft.inject_adapter_in_model``), so the model keeps
its class and its ``forward``; linscan's trainer fine-tunes it like any other model (only the
adapters have ``requires_grad``). ``merge_lora`` folds ``W + (alpha / r) B A`` into each
adapted Linear and puts the plain ``nn.Linear`` back: the saved model has no trace of peft.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj")


def require_peft():
    """The peft module; ImportError naming the extra that installs it."""
    try:
        import peft
    except ImportError as err:
        raise ImportError("LoRA needs peft: pip install 'linscan[lora]' (or pip install peft)") from err
    return peft


def apply_lora(model: nn.Module, *, rank: int = 8, alpha: float | None = None,
               targets: tuple[str, ...] = DEFAULT_TARGETS) -> nn.Module:
    """Freeze ``model`` and add rank-``rank`` LoRA adapters to every Linear named in ``targets``.

    rank: r (8: the Liger recipe). alpha: the scale numerator (default ``rank``: scale 1).
    targets: module-name suffixes (the q, k, v projections by default). The adapters' B starts
    at zero, so the model computes exactly what it did until the first update. In place;
    returns ``model``.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank: expected an int >= 1, got {rank!r}")
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.split(".")[-1] in targets]
    if not names:
        raise ValueError(f"targets: no Linear named {list(targets)} in the model")
    peft = require_peft()
    config = peft.LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=0.0,
                             target_modules=list(targets), bias="none")
    for p in model.parameters():
        p.requires_grad_(False)
    peft.inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def lora_parameters(model: nn.Module) -> int:
    """The number of adapter parameters in ``model``."""
    return sum(p.numel() for name, p in model.named_parameters() if ".lora_" in name)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its Linear and put the plain Linear back (in place; returns ``model``).

    Afterwards ``model`` has exactly its original parameter names and shapes, all trainable."""
    from peft.tuners.lora import LoraLayer

    adapted = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in adapted:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model
