"""Model configuration: a validated dataclass, JSON round-trip, named presets.

The layer pattern is a string with one letter per mixer, repeated over the
depth: ``"DDDA"`` with 8 layers is D D D A D D D A (Gated DeltaNet with one
softmax-attention layer in four).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..nn.mixers import MIXERS

# One letter per mixer (names as in linscan.nn.mixers.MIXERS).
LETTERS = {
    "A": "attention",           # softmax attention (SDPA, RoPE, KV cache)
    "L": "linear_attention",    # no decay
    "N": "lightning",           # constant per-head decay, ALiBi-style slopes
    "R": "retnet",              # retention: constant per-head decay 1 - 2^(-5-h)
    "G": "gla",                 # data-dependent diagonal decay
    "H": "hgrn2",               # forget gate f, input 1 - f
    "M": "mlstm",               # mLSTM, exponential input gate
    "E": "deltanet",            # delta rule, no gate
    "D": "gated_deltanet",      # delta rule with scalar gate
    "P": "deltaproduct",        # R Householder steps per token
    "O": "mom",                 # mixture of memories: top-k of M Gated DeltaNet states + a shared one
    "U": "pararnn_gru",         # nonlinear GRU, diagonal recurrence, Newton-parallel (ParaRNN)
    "C": "pararnn_lstm",        # nonlinear LSTM-CIFG, 2 x 2 blocks, Newton-parallel (ParaRNN)
    "Z": "alrnn",               # almost-linear RNN, dense Jacobian, Newton-parallel
    "I": "liger",               # Liger: attention's own q, k, v as a gated recurrence (+ sliding window)
    "T": "tcnca",               # TCNCA: dilated causal TCN, then softmax attention inside chunks
}


@dataclass
class LinscanConfig:
    """Decoder LM configuration.

    vocab_size: tokens (256: bytes). d_model: residual width. n_layers: depth.
    pattern: mixer letters repeated over the depth (see ``LETTERS``).
    n_heads / head_dim: heads of every mixer (head_dim default d_model // n_heads).
    mlp_ratio: SwiGLU hidden size / d_model (0 disables the MLP).
    mlp_hidden: the SwiGLU hidden size itself (None: from mlp_ratio, rounded up to 32; an imported
    model's exact width).
    aux_loss_coef: weight of the mixture-of-memories load-balancing loss added to the LM loss
    (the mean over the MoM layers; MATH.md section 6).
    tie_embeddings: the head shares the embedding table.
    init_std: RMS of the input embeddings at initialisation, as the first block reads them
    (1: the token dominates the residual stream at the start; see ``linscan.nn.init``).
    embed_scale: multiplier on the looked-up embeddings; None resolves to ``sqrt(d_model)``
    when tied (the table is N(0, 1/d_model): unit-variance logits from the tied head, unit-RMS
    inputs), else 1. The table is drawn from ``N(0, (init_std / embed_scale)^2)``.
    mixer_options: extra keyword options per mixer name, e.g.
    ``{"attention": {"window": 256}, "gated_deltanet": {"allow_neg_eigval": True}}``.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    pattern: str = "DDDA"
    n_heads: int = 4
    head_dim: int | None = None
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    init_std: float = 1.0
    embed_scale: float | None = None
    mixer_options: dict[str, dict] = field(default_factory=dict)
    aux_loss_coef: float = 0.01

    def __post_init__(self):
        if self.embed_scale is None:
            self.embed_scale = math.sqrt(self.d_model) if self.tie_embeddings else 1.0
        self.validate()

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not self.pattern:
            raise ValueError("pattern: expected at least one mixer letter, got ''")
        bad = sorted(set(self.pattern) - set(LETTERS))
        if bad:
            raise ValueError(f"pattern: unknown mixer letter(s) {bad} in {self.pattern!r}; "
                             f"expected letters from {''.join(LETTERS)} ({', '.join(f'{k}={v}' for k, v in LETTERS.items())})")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim < 1):
            raise ValueError(f"head_dim: expected None or a positive int, got {self.head_dim!r}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model = {self.d_model}, got {self.n_heads}")
        if self.mlp_hidden is not None and (isinstance(self.mlp_hidden, bool) or not isinstance(self.mlp_hidden, int)
                                            or self.mlp_hidden < 1):
            raise ValueError(f"mlp_hidden: expected None or a positive int, got {self.mlp_hidden!r}")
        if isinstance(self.aux_loss_coef, bool) or not isinstance(self.aux_loss_coef, (int, float)) \
                or not 0 <= self.aux_loss_coef < math.inf:
            raise ValueError(f"aux_loss_coef: expected a number >= 0, got {self.aux_loss_coef!r}")
        for name in ("init_std", "embed_scale", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or not 0 <= self.mlp_ratio < math.inf:
            raise ValueError(f"mlp_ratio: expected a number >= 0, got {self.mlp_ratio!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings: expected True or False, got {self.tie_embeddings!r}")
        if not isinstance(self.mixer_options, dict) or not all(isinstance(o, dict) for o in self.mixer_options.values()):
            raise ValueError(f"mixer_options: expected {{mixer name: {{option: value}}}}, got {self.mixer_options!r}")
        unknown = sorted(set(self.mixer_options) - set(LETTERS.values()))
        if unknown:
            raise ValueError(f"mixer_options: unknown mixer name(s) {unknown}; expected from {sorted(LETTERS.values())}")
        for name, options in self.mixer_options.items():
            accepted = _mixer_options(name)
            bad_options = sorted(set(options) - accepted)
            if bad_options:
                raise ValueError(f"mixer_options: unknown option(s) {bad_options} for {name!r}; "
                                 f"expected from {sorted(accepted)}")

    @property
    def mixers(self) -> list[str]:
        """The mixer name of every layer."""
        return [LETTERS[self.pattern[i % len(self.pattern)]] for i in range(self.n_layers)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LinscanConfig":
        if not isinstance(d, dict):
            raise ValueError(f"config: expected a JSON object of fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"config: unknown field(s) {extra}")
        if "embed_scale" not in d:          # saved before 2026-12-03: embeddings were not scaled
            d = {**d, "embed_scale": 1.0}
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LinscanConfig":
        """Read a config saved by :meth:`save`; ValueError naming the file when it is not one."""
        try:
            data = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"config: {path} is not a JSON config file ({e})") from e
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as e:
            raise ValueError(f"config: {path}: {e}") from e


def _mixer_options(name: str) -> set[str]:
    """The keyword options of a mixer (those the config does not set itself)."""
    params = inspect.signature(MIXERS[name]).parameters
    return {p for p, param in params.items() if param.kind is param.KEYWORD_ONLY} - {"head_dim", "layer_idx"}


PRESETS: dict[str, dict] = {
    # about 0.6M parameters: trains for a few minutes on 2 CPU cores
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, pattern="DDDA"),
    "small": dict(d_model=256, n_layers=6, n_heads=4, pattern="DDDA"),
    "125m": dict(d_model=768, n_layers=12, n_heads=6, pattern="DDDA", vocab_size=32000),
    "350m": dict(d_model=1024, n_layers=24, n_heads=8, pattern="DDDA", vocab_size=32000),
}


def preset(name: str, **overrides) -> LinscanConfig:
    """The named preset (exact name), with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return LinscanConfig(**(PRESETS[name] | overrides))
