"""Evaluation harness: train a small model per mixer on a synthetic task, report length generalisation."""

from .mixers import NAMES, MixerSpec, parse_mixer, parse_mixers
from .presets import PRESETS, EvalPreset, buckets, get_preset
from .report import format_table, plot_accuracy, write_outputs
from .runner import evaluate, run, scored_logits, train_one

__all__ = ["NAMES", "MixerSpec", "parse_mixer", "parse_mixers", "PRESETS", "EvalPreset", "buckets", "get_preset",
           "format_table", "plot_accuracy", "write_outputs", "evaluate", "run", "scored_logits", "train_one"]
