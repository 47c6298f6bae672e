"""Sequence mixers, one file per architecture, all with the same interface.

    mixer = MIXERS["gated_deltanet"](d_model, n_heads, head_dim=None, layer_idx=0, **options)
    y, state = mixer(x, state=None, cu_seqlens=None)       # x, y: [B, T, d_model]

``state`` is a dict of tensors whose leading axis is the sequence (N = B, or the
number of packed sequences); feeding it back continues the sequences, so decoding
is ``y_t, state = mixer(x_t, state)`` one token at a time.
"""

from .attention import Attention
from .deltanet import DeltaNet, DeltaProduct, GatedDeltaNet
from .gla import GLA
from .hgrn2 import HGRN2
from .lightning import Lightning, lightning_slopes
from .liger import Liger
from .linear_attention import LinearAttention
from .mlstm import MLSTM
from .mom import MoM
from .pararnn import ALRNNMixer, ParaGRUMixer, ParaLSTMMixer
from .retnet import RetNet
from .tcnca import TCNCA

MIXERS = {
    "linear_attention": LinearAttention,
    "lightning": Lightning,
    "retnet": RetNet,
    "gla": GLA,
    "hgrn2": HGRN2,
    "mlstm": MLSTM,
    "deltanet": DeltaNet,
    "gated_deltanet": GatedDeltaNet,
    "deltaproduct": DeltaProduct,
    "mom": MoM,
    "pararnn_gru": ParaGRUMixer,
    "pararnn_lstm": ParaLSTMMixer,
    "alrnn": ALRNNMixer,
    "attention": Attention,
    "liger": Liger,
    "tcnca": TCNCA,
}

__all__ = ["MIXERS", "Attention", "DeltaNet", "DeltaProduct", "GLA", "GatedDeltaNet", "HGRN2", "Lightning",
           "Liger", "LinearAttention", "MLSTM", "MoM", "RetNet", "ParaGRUMixer", "ParaLSTMMixer", "ALRNNMixer", "TCNCA", "lightning_slopes"]
