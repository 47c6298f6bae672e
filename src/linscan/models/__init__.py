"""Configs, presets and the decoder LM."""

from .config import LETTERS, PRESETS, LinscanConfig, preset
from .lm import CausalLMOutput, LinscanForCausalLM, sample

__all__ = ["LETTERS", "PRESETS", "LinscanConfig", "preset", "CausalLMOutput", "LinscanForCausalLM", "sample"]
