"""Arrow pointing: does the arrow point at the disc? (MATH.md section 8.3, the pLSTM task).

A white W x W RGB canvas holds a black filled disc and a black arrow; the label is
1 iff the ray from the arrow's centre along its direction hits the disc. Per sample,
with every paper size (given for W = 192) multiplied by ``object_scale``:

1. label 1 with probability 1/2; arrow length ``L`` an integer in ``[15, 30)``, stroke
   width an integer in ``[2, 4)``, disc radius ``r ~ U(15, 30)``.
2. Usable side ``s = W - 2 * margin``; arrow centre ``a ~ (s U, s U)``; disc centre per
   axis ``c = a + 2r + (s - 4r) U``, minus ``s`` if it passes ``s``, so ``|c - a| >= 2r``
   on each axis (wrapping around the usable square).
3. ``d = c - a``; a shrunken radius ``r / 1.2`` (label 1) or an enlarged ``1.2 r`` (label 0)
   gives the cone half-angle ``alpha = asin(r_d / |d|)`` around ``phi0 = atan2(d)``.
   Label 1 draws ``phi`` inside the shrunken cone, label 0 outside the enlarged one, so
   no sample sits near the decision boundary.
4. Draw the shaft ``a -/+ (L // 2) u_phi``, two head strokes of length ``L // 2.5`` at
   ``+/- 0.5`` rad from the tip, and the disc; every coordinate shifted by the margin.
   Rasterised exactly (pixel centres inside the disc or within width / 2 of a stroke).

Coordinates are pixels ``(x, y)``: x along a row (the last image axis), y down the
rows, so ``u_phi = (cos phi, sin phi)``; pixel ``image[:, j, i]`` is centred on ``(i, j)``.

Object scale rule: ``object_scale`` defaults to ``size / 192``, so a small CPU canvas
keeps the paper's proportions. The extrapolation split keeps the training objects and
margin in pixels and only grows the canvas, as the paper's 192 -> 384 test:

    train = ArrowPointing(size=64)                 # object_scale 1/3, margin 10 px
    test = train.with_canvas(128)                  # same objects and margin, 2x canvas
    images, labels = train.sample(256, seed=0)     # [256, 3, 64, 64] float32, [256] long
"""

from __future__ import annotations

import math
import operator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont   # only for save_examples

from . import _is_int

REF_SIZE = 192           # the paper's canvas; its object sizes below are for this side
REF_MARGIN = 30.0
REF_LENGTH = (15, 30)    # integer arrow length, upper end excluded
REF_WIDTH = (2, 4)       # integer stroke width, upper end excluded
REF_RADIUS = (15.0, 30.0)
CONE_FACTOR = 1.2        # label 1 aims at r / 1.2, label 0 avoids 1.2 r
HEAD_ANGLE = 0.5         # rad between the shaft and each head stroke
SUPERSAMPLE = 4          # drawing resolution factor when antialias=True


class ArrowPointing:
    """Arrow-pointing images; canvas ``size`` px, objects scaled by ``object_scale``.

    Args:
        size: canvas side in pixels (int >= 16).
        object_scale: factor on every paper size (length, width, radius, margin);
            default ``size / 192``. Keep it fixed across canvas sizes to test
            extrapolation (``with_canvas``).
        margin: blank border in pixels; default ``30 * object_scale``. Must be at least
            that (the largest disc touches the border) and leave a usable side
            ``size - 2 * margin >= 4 * 30 * object_scale`` (room for the disc placement).
        antialias: average 4 x 4 sub-pixels per pixel, giving grey edges (and strokes
            thinner than a pixel); the default is pure black on white like the paper.
    """

    def __init__(self, size: int = 64, *, object_scale: float | None = None,
                 margin: float | None = None, antialias: bool = False):
        if not _is_int(size) or size < 16:
            raise ValueError(f"ArrowPointing: size must be an int >= 16 (pixels), got {size!r}")
        size = operator.index(size)
        object_scale = size / REF_SIZE if object_scale is None else object_scale
        if not _is_real(object_scale) or not 0 < object_scale < math.inf:
            raise ValueError(f"ArrowPointing: object_scale must be a finite number > 0, got {object_scale!r}")
        min_margin = REF_MARGIN * object_scale
        margin = min_margin if margin is None else margin
        if not _is_real(margin) or not min_margin - 1e-9 <= margin < math.inf:
            raise ValueError(f"ArrowPointing: margin must be a number >= 30 * object_scale = {min_margin:.4g} "
                             f"(the largest disc radius), got {margin!r}")
        usable, need = size - 2 * margin, 4 * REF_RADIUS[1] * object_scale
        if usable < need:
            raise ValueError(f"ArrowPointing: size - 2 * margin = {usable:.4g} must be >= 4 * 30 * object_scale "
                             f"= {need:.4g}; got size={size}, object_scale={object_scale!r}, margin={margin!r}")
        if not isinstance(antialias, bool):
            raise ValueError(f"ArrowPointing: antialias must be a bool, got {antialias!r}")
        self.size, self.object_scale, self.margin = size, float(object_scale), float(margin)
        self.antialias = antialias

    def with_canvas(self, size: int) -> "ArrowPointing":
        """The same objects and margin (in pixels) on a ``size`` x ``size`` canvas."""
        return ArrowPointing(size, object_scale=self.object_scale, margin=self.margin, antialias=self.antialias)

    def sample(self, n: int, *, seed: int = 0, return_meta: bool = False):
        """Draw ``n`` labelled images.

        Args:
            n: number of images (int >= 1).
            seed: the only source of randomness (a private ``torch.Generator``); the
                same options, ``n`` and ``seed`` always give identical tensors.
            return_meta: also return the geometry of every sample.
        Returns:
            ``images`` float32 ``[n, 3, size, size]`` in ``[0, 1]`` (1 = white),
            ``labels`` long ``[n]`` (1 = the arrow points at the disc), and with
            ``return_meta`` a dict of float64 tensors in pixels: ``arrow_centre [n, 2]``
            and ``disc_centre [n, 2]`` as ``(x, y)``, ``phi [n]`` (rad), ``radius [n]``,
            ``length [n]`` (``object_scale * L``; the shaft spans ``2 * (L // 2)`` of it)
            and ``width [n]`` (stroke width as drawn; at least 1 px unless ``antialias``).
        """
        if not _is_int(n) or n < 1:
            raise ValueError(f"ArrowPointing.sample: n must be an int >= 1, got {n!r}")
        if not _is_int(seed):
            raise ValueError(f"ArrowPointing.sample: seed must be an int, got {seed!r}")
        gen = torch.Generator().manual_seed(operator.index(seed) % 2**63)
        labels, meta = self._geometry(operator.index(n), gen)
        images = self._render(meta)                                                   # (n, 3, W, W)
        return (images, labels, meta) if return_meta else (images, labels)

    def _geometry(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Labels ``[n]`` and the per-sample geometry of steps 1-3, all drawn from ``gen``."""
        k, s = self.object_scale, self.size - 2 * self.margin

        def uniform(*shape):
            return torch.rand(*shape, generator=gen, dtype=torch.float64)

        # 1. label and object sizes (every draw happens for every sample, so the stream
        #    of random numbers does not depend on the labels)
        labels = torch.randint(0, 2, (n,), generator=gen)                              # (n,)
        length = torch.randint(*REF_LENGTH, (n,), generator=gen).double()               # (n,) paper px
        width = torch.randint(*REF_WIDTH, (n,), generator=gen).double()
        radius = k * (REF_RADIUS[0] + (REF_RADIUS[1] - REF_RADIUS[0]) * uniform(n))      # (n,)
        # 2. arrow centre anywhere; disc centre >= 2r away on each axis, wrapped into [0, s]
        arrow = s * uniform(n, 2)                                                       # (n, 2)
        disc = arrow + 2 * radius[:, None] + (s - 4 * radius[:, None]) * uniform(n, 2)
        disc = torch.where(disc > s, disc - s, disc)
        # 3. direction: inside the shrunken cone (label 1) or outside the enlarged one (label 0)
        d = disc - arrow
        r_cone = torch.where(labels == 1, radius / CONE_FACTOR, radius * CONE_FACTOR)
        alpha = torch.asin(r_cone / d.norm(dim=1))                                     # (n,)
        phi0 = torch.atan2(d[:, 1], d[:, 0])
        u = uniform(n)
        phi = torch.where(labels == 1, phi0 - alpha + 2 * alpha * u,
                          phi0 + alpha + (2 * math.pi - 2 * alpha) * u)
        meta = {"arrow_centre": arrow + self.margin, "disc_centre": disc + self.margin,
                "phi": torch.remainder(phi, 2 * math.pi), "radius": radius,
                "length": k * length, "width": k * width}
        if not self.antialias:       # a 1-bit stroke is at least one pixel wide
            meta["width"] = meta["width"].round().clamp_min(1.0)
        return labels, meta

    def _render(self, meta: dict[str, torch.Tensor]) -> torch.Tensor:
        """Step 4 for every sample: float32 ``[n, 3, W, W]``, black (0) on white (1).

        Exact rasterisation: a pixel is ink when its centre lies in the disc or within
        ``width / 2`` of a stroke (a segment with round caps); pixel ``i`` is centred on
        coordinate ``i``. (Pillow's drawing truncates float coordinates, which moves
        the small arrows of a CPU-sized canvas by up to a pixel off their geometry.)
        With ``antialias`` every pixel averages 4 x 4 sub-pixel centres.
        """
        f = SUPERSAMPLE if self.antialias else 1
        grid = (torch.arange(f * self.size, dtype=torch.float64) + 0.5) / f - 0.5       # sub-pixel centres
        x, y = grid[None, None, :], grid[None, :, None]                                # (1, 1, fW), (1, fW, 1)
        n, chunk = meta["phi"].shape[0], max(1, 2**21 // grid.numel() ** 2)
        out = []
        for lo in range(0, n, chunk):
            m = {key: value[lo : lo + chunk, ..., None, None] for key, value in meta.items()}   # (c, [2,] 1, 1)
            ink = (x - m["disc_centre"][:, 0]) ** 2 + (y - m["disc_centre"][:, 1]) ** 2 <= m["radius"] ** 2
            for start, end in self._strokes(m):
                ink |= _segment_distance(x, y, start, end) <= m["width"] / 2            # (c, fW, fW)
            grey = 1 - ink.float()
            if f > 1:
                grey = torch.nn.functional.avg_pool2d(grey[:, None], f)[:, 0]          # (c, W, W)
            out.append(grey)
        return torch.cat(out)[:, None].expand(-1, 3, -1, -1).contiguous()             # (n, 3, W, W)

    def _strokes(self, m: dict[str, torch.Tensor]):
        """The shaft and the two head strokes as ``(start, end)`` pairs of ``(x, y)``."""
        ref_length = torch.round(m["length"] / self.object_scale)                       # the paper's integer L
        half = self.object_scale * torch.div(ref_length, 2, rounding_mode="floor")
        head = self.object_scale * torch.div(ref_length, 2.5, rounding_mode="floor")
        (ax, ay), phi = m["arrow_centre"].unbind(1), m["phi"]
        tip = (ax + half * torch.cos(phi), ay + half * torch.sin(phi))
        yield (ax - half * torch.cos(phi), ay - half * torch.sin(phi)), tip
        for turn in (HEAD_ANGLE, -HEAD_ANGLE):
            yield tip, (tip[0] - head * torch.cos(phi + turn), tip[1] - head * torch.sin(phi + turn))

    def save_examples(self, path, n: int = 8, *, seed: int = 0, columns: int = 4) -> Path:
        """Write a PNG grid of ``n`` samples, each captioned with its label, to ``path``.

        Tiles are enlarged (nearest neighbour) to at least 128 px so small canvases stay
        legible. Returns the path written.
        """
        if not _is_int(columns) or columns < 1:
            raise ValueError(f"ArrowPointing.save_examples: columns must be an int >= 1, got {columns!r}")
        images, labels = self.sample(n, seed=seed)
        zoom = max(1, -(-128 // self.size))
        tile, caption, gap = self.size * zoom, 16, 4
        rows = -(-n // columns)
        grid = Image.new("RGB", (columns * (tile + gap) + gap, rows * (tile + caption + gap) + gap), (200, 200, 200))
        pen, font = ImageDraw.Draw(grid), ImageFont.load_default()
        for i in range(n):
            x0 = gap + (i % columns) * (tile + gap)
            y0 = gap + (i // columns) * (tile + caption + gap)
            pixels = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)   # (W, W, 3)
            grid.paste(Image.fromarray(pixels).resize((tile, tile), Image.NEAREST), (x0, y0))
            text = "1: points at disc" if labels[i] == 1 else "0: misses"
            pen.text((x0 + 2, y0 + tile + 2), text, fill=(0, 0, 0), font=font)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path, format="PNG")
        return path

    def __repr__(self) -> str:
        return (f"ArrowPointing(size={self.size}, object_scale={self.object_scale:.4g}, "
                f"margin={self.margin:.4g}, antialias={self.antialias})")


def ray_hits_disc(arrow_centre, phi: float, disc_centre, radius: float) -> bool:
    """True iff the ray ``arrow_centre + t (cos phi, sin phi)``, ``t >= 0``, meets the
    closed disc of ``radius`` around ``disc_centre`` (points as ``(x, y)``).

    An independent check of the labels: solves ``|p + t u - c|^2 = radius^2`` for ``t``
    instead of using the cone angles the generator draws from.
    """
    px, py = (float(v) for v in arrow_centre)
    cx, cy = (float(v) for v in disc_centre)
    dx, dy = cx - px, cy - py
    along = dx * math.cos(float(phi)) + dy * math.sin(float(phi))     # t of the closest approach
    disc = along * along - (dx * dx + dy * dy - float(radius) ** 2)   # discriminant / 4
    if disc < 0:
        return False                                # the line misses the circle
    return along + math.sqrt(disc) >= 0             # the far intersection lies ahead of the start


def _segment_distance(x, y, start, end) -> torch.Tensor:
    """Distance from the points ``(x, y)`` to the segment ``start -> end`` (broadcast)."""
    dx, dy = end[0] - start[0], end[1] - start[1]
    t = ((x - start[0]) * dx + (y - start[1]) * dy) / (dx * dx + dy * dy).clamp_min(1e-12)
    t = t.clamp(0, 1)                                                        # nearest point on the segment
    return torch.hypot(x - start[0] - t * dx, y - start[1] - t * dy)


def _is_real(x) -> bool:
    """True for Python/NumPy real numbers, False for bools."""
    return not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating))


__all__ = ["ArrowPointing", "ray_hits_disc"]
