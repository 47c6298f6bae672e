"""Liger conversion: the attention layers of a trained model become Liger layers on the same weights."""

from __future__ import annotations

import copy

from ..models import LinscanConfig, LinscanForCausalLM
from ..models.config import LETTERS
from ..nn.mixers.liger import RECURRENCES

ATTENTION, LIGER = "A", "I"
# the Attention options a Liger layer takes over unchanged
SHARED_OPTIONS = ("rope_base", "qkv_bias", "n_kv_heads")


def liger_config(config: LinscanConfig, *, recurrence: str = "gla", window: int | None = 64,
                 recurrent_weight: float = 0.5, keep_attention_every: int | None = None) -> LinscanConfig:
    """The config of the converted model: attention layers -> Liger layers (letter "I").

    With ``keep_attention_every = n`` every n-th attention layer (the n-th, 2n-th, ... of them)
    stays softmax attention (the inter-layer hybrid, Liger-H); the others convert. Other layers
    (any other letter) are kept as they are. The pattern is written out layer by layer.
    """
    if recurrence not in RECURRENCES:
        raise ValueError(f"recurrence: expected one of {RECURRENCES}, got {recurrence!r}")
    if keep_attention_every is not None and (isinstance(keep_attention_every, bool)
                                             or not isinstance(keep_attention_every, int) or keep_attention_every < 1):
        raise ValueError(f"keep_attention_every: expected None or an int >= 1, got {keep_attention_every!r}")
    letters = [config.pattern[i % len(config.pattern)] for i in range(config.n_layers)]
    attention_layers = [i for i, letter in enumerate(letters) if letter == ATTENTION]
    if not attention_layers:
        raise ValueError(f"model: expected attention layers ('A') to convert, got pattern {config.pattern!r} "
                         f"({', '.join(sorted(set(config.mixers)))})")
    for j, i in enumerate(attention_layers):
        if keep_attention_every is None or (j + 1) % keep_attention_every:
            letters[i] = LIGER
    attention_options = config.mixer_options.get(LETTERS[ATTENTION], {})
    if attention_options.get("window") is not None:
        raise ValueError(f"model: expected full-attention layers, got window {attention_options['window']}")
    liger_options = {k: v for k, v in attention_options.items() if k in SHARED_OPTIONS}
    liger_options |= {"recurrence": recurrence, "window": window, "recurrent_weight": recurrent_weight}
    data = config.to_dict()
    data["pattern"] = "".join(letters)
    data["mixer_options"] = {**config.mixer_options, LETTERS[LIGER]: liger_options}
    return LinscanConfig.from_dict(data)


def liger(model: LinscanForCausalLM, *, recurrence: str = "gla", window: int | None = 64,
          recurrent_weight: float = 0.5, keep_attention_every: int | None = None) -> LinscanForCausalLM:
    """A new model whose attention layers are Liger layers reusing their q, k, v, o exactly.

    model: a ``LinscanForCausalLM`` with attention layers (a trained one, or ``from_llama``'s).
    recurrence: ``"gla"``, ``"gated_deltanet"`` or ``"hgrn2"`` (``linscan.nn.mixers.Liger``).
    window: the sliding window of Liger Attention (64: the paper's); None: pure Liger.
    recurrent_weight: the recurrent branch's share (0.5: the paper's).
    keep_attention_every: keep every n-th attention layer as softmax attention (None: convert all).
    Every tensor of ``model`` is copied bit for bit under the same name; there are no new ones,
    so the parameter count is the same. ``model`` itself is not changed.
    """
    config = liger_config(model.config, recurrence=recurrence, window=window, recurrent_weight=recurrent_weight,
                          keep_attention_every=keep_attention_every)
    converted = LinscanForCausalLM(config).to(next(model.parameters()).dtype)
    converted.load_state_dict(copy.deepcopy(model.state_dict()), strict=True)  # same names, same shapes
    return converted.train(model.training)
