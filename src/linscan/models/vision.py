"""An image classifier whose token mixer over the patch grid is chosen by name (the pLSTM vision set-up).

    from linscan.models.vision import VisionClassifier, VisionConfig
    model = VisionClassifier(VisionConfig(image_size=96, patch_size=8, mixer="plstm"))
    logits = model(images)                     # images [B, 3, W, W] -> [B, n_classes], any W

1. patches: a stride-p convolution, ``[B, 3, W, W] -> [B, X, Y, d]`` with X = Y = W / p;
2. position: a learned ``[X0, Y0, d]`` table for the training grid, bilinearly resized to
   another grid (larger test images: the objects keep their size in pixels, the grid grows);
3. n_layers pre-norm residual blocks, ``x + mixer(norm(x))`` then ``x + SwiGLU(norm(x))``;
4. a final norm, the mean over the grid, a linear head.

Mixers (``MIXERS``), each ``[B, X, Y, d] -> [B, X, Y, d]``:

    plstm           pLSTM, P-mode and D-mode layers alternating (as pLSTM's vision model)
    plstm_d         pLSTM, D-mode layers only
    lightnet        LightNet's non-causal additive attention with MD-LRPE
    attention       softmax attention over all patches, no mask (a ViT)
    gated_deltanet  a 1-D baseline: Gated DeltaNet over the row-major flattened patches

A pLSTM layer sweeps from one corner; layer l starts from corner l mod 4 (ours: MATH.md
does not fix it), so after four layers every cell has read the whole grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.grid import LightNetAttention, PLSTM2D
from ..nn.mixers import GatedDeltaNet
from ..nn.mlp import SwiGLU
from ..nn.norms import RMSNorm

MIXERS = ("plstm", "plstm_d", "lightnet", "attention", "gated_deltanet")


@dataclass
class VisionConfig:
    """image_size: the training side W (the position table has (W / patch_size)^2 entries);
    other sizes are resized to. mixer: one of ``MIXERS``."""

    image_size: int = 96
    patch_size: int = 8
    channels: int = 3
    n_classes: int = 2
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    mixer: str = "plstm"

    def __post_init__(self):
        for name in ("image_size", "patch_size", "channels", "n_classes", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size: expected a multiple of patch_size = {self.patch_size}, "
                             f"got {self.image_size}")
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer: expected one of {', '.join(MIXERS)}, got {self.mixer!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model: expected a multiple of n_heads = {self.n_heads}, got {self.d_model}")

    def to_dict(self) -> dict:
        return asdict(self)


class GridAttention(nn.Module):
    """Softmax attention over every cell of a grid (no mask, no rotary: positions come from the
    classifier's table): ``[B, X, Y, d] -> [B, X, Y, d]``."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, X, Y, d = x.shape
        q, k, v = self.qkv(x).view(B, X * Y, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, XY, K) each
        o = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(o.transpose(1, 2).reshape(B, X, Y, d))


class FlattenedScan(nn.Module):
    """A 1-D mixer over the row-major flattened grid: ``[B, X, Y, d] -> [B, X * Y, d] -> back``."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, X, Y, d = x.shape
        y, _ = self.mixer(x.reshape(B, X * Y, d))
        return y.view(B, X, Y, d)


class GridLightNet(LightNetAttention):
    """LightNet's grid form without the (empty) state: ``[B, X, Y, d] -> [B, X, Y, d]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]


def build_mixer(name: str, d_model: int, n_heads: int, layer_idx: int) -> nn.Module:
    """Mixer ``name`` (``MIXERS``) for layer ``layer_idx`` (module docstring)."""
    if name in ("plstm", "plstm_d"):
        mode = "P" if name == "plstm" and layer_idx % 2 == 0 else "D"
        return PLSTM2D(d_model, n_heads, mode=mode, orientation=layer_idx % 4)
    if name == "lightnet":
        return GridLightNet(d_model, n_heads, layer_idx=layer_idx)
    if name == "attention":
        return GridAttention(d_model, n_heads)
    if name == "gated_deltanet":
        return FlattenedScan(GatedDeltaNet(d_model, n_heads, layer_idx=layer_idx))
    raise ValueError(f"mixer: expected one of {', '.join(MIXERS)}, got {name!r}")


class VisionBlock(nn.Module):
    """``x + mixer(norm(x))``, then ``x + SwiGLU(norm(x))``, on ``[B, X, Y, d]``."""

    def __init__(self, config: VisionConfig, layer_idx: int):
        super().__init__()
        d = config.d_model
        self.mixer_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.mixer = build_mixer(config.mixer, d, config.n_heads, layer_idx)
        self.mlp = SwiGLU(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class VisionClassifier(nn.Module):
    """Patch embedding, resizable position table, mixer blocks, mean pooling, linear head."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        d, p, side = config.d_model, config.patch_size, config.image_size // config.patch_size
        self.patch = nn.Conv2d(config.channels, d, kernel_size=p, stride=p)
        self.position = nn.Parameter(torch.randn(side, side, d) * 0.02)
        self.blocks = nn.ModuleList(VisionBlock(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, config.n_classes)

    def positions(self, X: int, Y: int) -> torch.Tensor:
        """The position table for an X x Y grid ``[X, Y, d]`` (resized bilinearly if it differs)."""
        if (X, Y) == tuple(self.position.shape[:2]):
            return self.position
        table = self.position.permute(2, 0, 1)[None]                    # (1, d, X0, Y0)
        return F.interpolate(table, size=(X, Y), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[B, channels, W, W']`` (W, W' multiples of patch_size) -> logits ``[B, n_classes]``."""
        c, p = self.config.channels, self.config.patch_size
        if images.dim() != 4 or images.shape[1] != c or images.shape[2] % p or images.shape[3] % p:
            raise ValueError(f"images: expected [B, {c}, W, W'] with W, W' multiples of {p}, "
                             f"got {list(images.shape)}")
        x = self.patch(images).permute(0, 2, 3, 1)                     # (B, X, Y, d)
        x = x + self.positions(x.shape[1], x.shape[2])
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=(1, 2)))
