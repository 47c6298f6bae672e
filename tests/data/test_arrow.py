"""Arrow pointing (MATH.md 8.3): every label re-checked by a ray-circle intersection,
the drawing checked against the geometry, the object-scale rule of the 2x canvas,
determinism, shapes and clear errors."""

import math

import pytest
import torch
from PIL import Image

from linscan.data.tasks.arrow import ArrowPointing, ray_hits_disc


@pytest.fixture(scope="module")
def batch():
    """300 samples of the default 64 px task, with their geometry."""
    return ArrowPointing(64).sample(300, seed=0, return_meta=True)


def dark(images):
    """Number of dark pixels per image of ``[n, 3, W, W]`` -> ``[n]``."""
    return (images[:, 0] < 0.5).sum(dim=(1, 2)).float()


# ---------------------------------------------------------------- the ray test itself

@pytest.mark.parametrize("start, phi, centre, radius, hit", [
    ((0, 0), 0.0, (10, 0), 2, True),                  # straight at it
    ((0, 0), math.pi, (10, 0), 2, False),             # straight away
    ((0, 0), math.pi / 2, (0, 10), 2, True),          # +y
    ((0, 0), 0.0, (10, 2), 2, True),                  # tangent counts as a hit
    ((0, 0), 0.0, (10, 2.01), 2, False),              # just past the tangent
    ((0, 0), math.atan2(3, 10), (10, 0), 2, False),   # aimed beside it
    ((0, 0), 1.0, (10, 0), 2, False),                 # line misses entirely
    ((9, 0), math.pi, (10, 0), 2, True),              # starts inside the disc
    ((20, 0), 0.0, (10, 0), 2, False),                # disc behind the start
])
def test_ray_hits_disc_by_hand(start, phi, centre, radius, hit):
    assert ray_hits_disc(start, phi, centre, radius) is hit


# ---------------------------------------------------------------- labels

def test_every_label_agrees_with_the_ray_test(batch):
    _, labels, meta = batch
    for i, label in enumerate(labels.tolist()):
        args = meta["arrow_centre"][i], meta["phi"][i], meta["disc_centre"][i]
        r = float(meta["radius"][i])
        assert ray_hits_disc(*args, r) == bool(label), i
        # the cone margin: positives aim at the disc shrunk by 1.2, negatives miss it grown by 1.2
        assert ray_hits_disc(*args, r / 1.2 - 1e-6) if label else not ray_hits_disc(*args, 1.2 * r + 1e-6), i


def test_label_balance_and_variety(batch):
    images, labels, _ = batch
    assert abs(labels.float().mean().item() - 0.5) < 0.1           # 4 sigma at n = 300
    flat = images.flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == len(flat)         # no two images alike


def test_geometry_stays_on_the_canvas(batch):
    _, _, meta = batch
    a, c, r = meta["arrow_centre"], meta["disc_centre"], meta["radius"][:, None]
    assert ((c - r >= 0) & (c + r <= 64)).all()                    # the whole disc
    assert ((a >= 10) & (a <= 54)).all()                           # centre inside the margin of 10
    assert ((c - a).abs() >= 2 * r - 1e-9).all()                   # >= 2r apart on each axis
    assert ((meta["phi"] >= 0) & (meta["phi"] < 2 * math.pi)).all()


# ---------------------------------------------------------------- images

def test_shapes_dtypes_and_range(batch):
    images, labels, meta = batch
    assert images.shape == (300, 3, 64, 64) and images.dtype == torch.float32
    assert labels.shape == (300,) and labels.dtype == torch.long
    assert set(labels.unique().tolist()) == {0, 1}
    assert images.min() == 0 and images.max() == 1
    assert set(images.unique().tolist()) == {0.0, 1.0}             # black on white, no grey
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    for key, shape in [("arrow_centre", (300, 2)), ("disc_centre", (300, 2)), ("phi", (300,)),
                       ("radius", (300,)), ("length", (300,)), ("width", (300,))]:
        assert meta[key].shape == shape and meta[key].dtype == torch.float64


def test_drawing_matches_the_geometry(batch):
    """Ink exactly where the geometry says: the whole disc, the arrow near its centre,
    nothing else; pixel image[:, j, i] is centred on (x, y) = (i, j)."""
    images, _, meta = batch
    ink = images[:, 0] == 0                                                       # (n, W, W)
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")

    def distance(points):                                                         # (n, W, W)
        return torch.hypot(x - points[:, 0, None, None], y - points[:, 1, None, None])

    r, reach = meta["radius"][:, None, None], (meta["length"] / 2 + meta["width"])[:, None, None]
    in_disc, near_arrow = distance(meta["disc_centre"]) <= r, distance(meta["arrow_centre"]) <= reach
    assert ink[in_disc].all()
    assert not ink[~in_disc & ~near_arrow].any()
    assert (ink & near_arrow).sum(dim=(1, 2)).min() >= 3                          # the arrow is drawn
    swapped = torch.hypot(y - meta["disc_centre"][:, 0, None, None], x - meta["disc_centre"][:, 1, None, None])
    assert not ink[swapped <= r].all()                                            # x and y not swapped


def test_same_seed_same_tensors_other_seed_other():
    task = ArrowPointing(32)
    a, b = task.sample(20, seed=3), task.sample(20, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], task.sample(20, seed=4)[0])


def test_double_canvas_keeps_object_sizes_in_pixels(batch):
    images, labels, meta = batch
    train = ArrowPointing(64)
    test = train.with_canvas(128)
    assert test.size == 128 and test.object_scale == train.object_scale == 64 / 192 and test.margin == train.margin
    big, big_labels, big_meta = test.sample(300, seed=0, return_meta=True)
    assert big.shape == (300, 3, 128, 128)
    assert torch.equal(big_labels, labels)
    for key in ("radius", "length", "width"):
        assert torch.equal(big_meta[key], meta[key])
    assert big_meta["arrow_centre"].max() > 64                     # the objects use the larger canvas
    assert abs(dark(big).mean() / dark(images).mean() - 1) < 0.1   # same ink, only the canvas grew
    grown = ArrowPointing(128).sample(300, seed=0)[0]              # default scale: objects grow too
    assert dark(grown).mean() / dark(images).mean() > 3


def test_paper_sizes_and_antialias():
    paper = ArrowPointing(192)
    assert paper.object_scale == 1 and paper.margin == 30
    _, _, meta = paper.sample(50, seed=1, return_meta=True)
    assert ((meta["length"] >= 15) & (meta["length"] < 30)).all() and (meta["length"] == meta["length"].round()).all()
    assert set(meta["width"].tolist()) <= {2.0, 3.0}
    assert ((meta["radius"] >= 15) & (meta["radius"] <= 30)).all()
    sharp, labels, _ = ArrowPointing(48).sample(10, seed=2, return_meta=True)
    smooth, smooth_labels, _ = ArrowPointing(48, antialias=True).sample(10, seed=2, return_meta=True)
    assert torch.equal(labels, smooth_labels)
    assert ((smooth > 0) & (smooth < 1)).any() and (smooth - sharp).abs().mean() < 0.05


def test_save_examples_writes_a_png(tmp_path):
    path = ArrowPointing(32).save_examples(tmp_path / "sub" / "arrows.png", n=6, columns=3)
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.width > 3 * 128 and img.height > 2 * 128        # tiles enlarged to >= 128 px


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, word", [
    (dict(size=8), "size"),
    (dict(size=64.0), "size"),
    (dict(size=True), "size"),
    (dict(size=64, object_scale=0), "object_scale"),
    (dict(size=64, object_scale=float("nan")), "object_scale"),
    (dict(size=64, object_scale=1.0), "object_scale"),             # objects too large for the canvas
    (dict(size=64, margin=5), "margin"),                           # below 30 * object_scale
    (dict(size=64, margin=13), "margin"),                          # leaves no room to place the disc
    (dict(size=64, antialias=1), "antialias"),
])
def test_bad_options_raise(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ArrowPointing(**kwargs)


@pytest.mark.parametrize("kwargs, word", [
    (dict(n=0), "n"), (dict(n=2.0), "n"), (dict(n=2, seed=0.5), "seed"), (dict(n=2, seed="0"), "seed"),
])
def test_bad_sample_arguments_raise(kwargs, word):
    with pytest.raises(ValueError, match=rf"\b{word} must"):
        ArrowPointing(32).sample(**kwargs)
    with pytest.raises(ValueError, match="columns"):
        ArrowPointing(32).save_examples("unused.png", columns=0)
