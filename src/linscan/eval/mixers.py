"""Mixer names of the evaluation harness -> (layer pattern letter, mixer options).

A name is one of ``NAMES`` or a hybrid ``"first+second R:S"`` (R layers of the
first per S of the second, default 1:1): ``"gated_deltanet+attention 3:1"`` is
the pattern ``"DDDA"``. The ``_neg`` variants let beta reach 2, so the
transition ``I - beta k k^T`` has eigenvalues in [-1, 1] (state tracking).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# name -> (pattern letter, options of that letter's mixer in linscan.nn.mixers)
NAMES: dict[str, tuple[str, dict]] = {
    "deltanet": ("E", {}),
    "deltanet_neg": ("E", {"allow_neg_eigval": True}),
    "gated_deltanet": ("D", {}),
    "gated_deltanet_neg": ("D", {"allow_neg_eigval": True}),
    "deltaproduct2": ("P", {"n_householder": 2}),
    "deltaproduct2_neg": ("P", {"n_householder": 2, "allow_neg_eigval": True}),
    "mlstm": ("M", {}),
    "gla": ("G", {}),
    "gla_conv": ("G", {"use_short_conv": True}),
    "lightning": ("N", {}),
    "linear_attention": ("L", {}),
    "linear_attention_conv": ("L", {"use_short_conv": True}),
    "retnet": ("R", {}),
    "hgrn2": ("H", {}),
    "attention": ("A", {}),
    "mom": ("O", {}),                  # mixture of memories: top-2 of 4 Gated DeltaNet memories + a shared one
    "pararnn_gru": ("U", {}),          # nonlinear RNNs, trained by Newton iterations
    "pararnn_lstm": ("C", {}),
    "tcnca": ("T", {}),                # dilated causal TCN + attention inside chunks of 64
}

_HYBRID = re.compile(r"^\s*([a-z0-9_]+)\s*\+\s*([a-z0-9_]+)\s*(?:(\d+)\s*:\s*(\d+))?\s*$")


@dataclass(frozen=True)
class MixerSpec:
    """A parsed mixer name: ``pattern`` (letters, repeated over the depth) and ``mixer_options``
    (``LinscanConfig.mixer_options``: per mixer module name)."""

    name: str
    pattern: str
    mixer_options: dict = field(default_factory=dict)

    def n_layers(self, depth: int) -> int:
        """``depth`` rounded up to a multiple of the pattern length (every hybrid period complete)."""
        period = len(self.pattern)
        return -(-depth // period) * period


def _unknown(name: str) -> ValueError:
    return ValueError(f"mixers: unknown mixer {name!r}; expected one of {', '.join(NAMES)} "
                      f"or a hybrid 'first+second R:S' such as 'gated_deltanet+attention 3:1'")


def parse_mixer(text: str) -> MixerSpec:
    """``"deltanet_neg"`` or ``"gated_deltanet+attention 3:1"`` -> :class:`MixerSpec`."""
    from ..models.config import LETTERS

    name = text.strip()
    if name in NAMES:
        letter, options = NAMES[name]
        return MixerSpec(name, letter, {LETTERS[letter]: dict(options)} if options else {})
    match = _HYBRID.match(name)
    if not match:
        raise _unknown(name)
    first, second, r, s = match.groups()
    for part in (first, second):
        if part not in NAMES:
            raise _unknown(part)
    r, s = int(r or 1), int(s or 1)
    if r < 1 or s < 1:
        raise ValueError(f"mixers: expected a ratio R:S of positive integers in {name!r}, got {r}:{s}")
    (la, oa), (lb, ob) = NAMES[first], NAMES[second]
    if la == lb:
        raise ValueError(f"mixers: a hybrid needs two different mixer modules, got {first!r} and {second!r} in {name!r}")
    options = {LETTERS[letter]: dict(o) for letter, o in ((la, oa), (lb, ob)) if o}
    return MixerSpec(f"{first}+{second} {r}:{s}", la * r + lb * s, options)


def parse_mixers(text: str) -> list[MixerSpec]:
    """Comma-separated mixer names (see :func:`parse_mixer`) -> specs, in order, duplicates dropped."""
    names = [t for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"mixers: expected a comma-separated list of mixer names, got {text!r}")
    specs = {}
    for spec in map(parse_mixer, names):
        specs.setdefault(spec.name, spec)
    return list(specs.values())
