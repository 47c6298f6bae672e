"""The vision classifier (linscan.models.vision): shapes at the training and larger grids, the
position table's resizing, each mixer against an independent computation, configuration errors."""

import pytest
import torch

from linscan.models.vision import MIXERS, FlattenedScan, GridAttention, VisionClassifier, VisionConfig
from linscan.nn.grid import PLSTM2D
from linscan.nn.mixers import GatedDeltaNet


def small(mixer, **options):
    sizes = dict(image_size=32, patch_size=8, d_model=16, n_layers=2, n_heads=2)
    return VisionConfig(**{**sizes, **options}, mixer=mixer)


@pytest.mark.parametrize("mixer", MIXERS)
def test_logits_at_the_training_size_and_twice_it(mixer):
    torch.manual_seed(0)
    model = VisionClassifier(small(mixer))
    for side in (32, 64):
        images = torch.rand(3, 3, side, side)
        logits = model(images)
        assert logits.shape == (3, 2) and torch.isfinite(logits).all()
        logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_position_table_is_kept_on_its_grid_and_resized_on_others():
    model = VisionClassifier(small("attention"))
    assert model.positions(4, 4) is model.position
    with torch.no_grad():
        model.position.copy_(torch.arange(4.0)[:, None, None].expand(4, 4, 16))  # constant along Y
    table = model.positions(8, 6)
    assert table.shape == (8, 6, 16)
    torch.testing.assert_close(table[:, 0], table[:, -1])                       # still constant along Y
    assert (table[1:, 0, 0] >= table[:-1, 0, 0]).all() and table[0, 0, 0] == 0 and table[-1, 0, 0] == 3


def test_plstm_alternates_p_and_d_and_turns_the_start_corner():
    model = VisionClassifier(VisionConfig(image_size=32, patch_size=8, d_model=16, n_layers=5, n_heads=2))
    mixers = [block.mixer for block in model.blocks]
    assert all(isinstance(m, PLSTM2D) for m in mixers)
    assert [m.mode for m in mixers] == ["P", "D", "P", "D", "P"]
    assert [m.orientation for m in mixers] == [0, 1, 2, 3, 0]
    d_only = VisionClassifier(small("plstm_d", n_layers=3))
    assert [b.mixer.mode for b in d_only.blocks] == ["D", "D", "D"]


def test_grid_attention_is_softmax_attention_over_all_cells():
    torch.manual_seed(1)
    layer = GridAttention(8, 2).double()
    x = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    q, k, v = layer.qkv(x.reshape(2, 12, 8)).chunk(3, dim=-1)
    heads = [slice(0, 4), slice(4, 8)]
    o = torch.cat([torch.softmax(q[..., h] @ k[..., h].transpose(1, 2) / 2.0, -1) @ v[..., h] for h in heads], -1)
    torch.testing.assert_close(layer(x), layer.o_proj(o).view(2, 3, 4, 8))


def test_flattened_scan_reads_the_patches_row_major():
    torch.manual_seed(2)
    inner = GatedDeltaNet(16, 2)
    x = torch.randn(2, 3, 5, 16)
    y, _ = inner(x.reshape(2, 15, 16))
    torch.testing.assert_close(FlattenedScan(inner)(x), y.view(2, 3, 5, 16))


@pytest.mark.parametrize("options, match", [
    (dict(mixer="vit"), r"mixer: expected one of plstm, plstm_d"),
    (dict(image_size=30), r"image_size: expected a multiple of patch_size = 8, got 30"),
    (dict(d_model=15), r"d_model: expected a multiple of n_heads = 2, got 15"),
    (dict(n_layers=0), r"n_layers: expected a positive int, got 0"),
])
def test_config_errors(options, match):
    with pytest.raises(ValueError, match=match):
        small(options.pop("mixer", "plstm"), **options)


def test_images_of_the_wrong_shape_are_refused():
    model = VisionClassifier(small("lightnet"))
    with pytest.raises(ValueError, match=r"images: expected \[B, 3, W, W'\] with W, W' multiples of 8"):
        model(torch.rand(1, 3, 30, 32))
