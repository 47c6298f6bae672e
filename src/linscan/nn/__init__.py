"""Layers: norms, SwiGLU, short convolution, rotary embedding, the sequence mixers, LCM set aggregation.

Mixers are looked up by name in :data:`linscan.nn.mixers.MIXERS`; every one maps
``x [B, T, d_model]`` (and an optional state) to ``(y [B, T, d_model], new_state)``.
"""

from .conv import ShortConv
from .init import init_weights, keep_init
from .lcm import LCM, LCMCombine
from .mixers import MIXERS
from .mlp import SwiGLU
from .norms import GatedRMSNorm, RMSNorm
from .rotary import RotaryEmbedding, token_positions

__all__ = ["MIXERS", "LCM", "LCMCombine", "GatedRMSNorm", "init_weights", "keep_init", "RMSNorm", "RotaryEmbedding", "ShortConv", "SwiGLU", "token_positions"]
