"""LinscanConfig and config files: every bad value is a ValueError naming the field (and the file)."""

import pytest

from linscan.models import LinscanConfig


@pytest.mark.parametrize("fields, argument", [
    ({"norm_eps": -1.0}, "norm_eps"), ({"norm_eps": float("nan")}, "norm_eps"), ({"mlp_ratio": "4"}, "mlp_ratio"),
    ({"mlp_ratio": float("inf")}, "mlp_ratio"), ({"tie_embeddings": "yes"}, "tie_embeddings"),
    ({"mixer_options": {"attention": 3}}, "mixer_options"), ({"init_std": 0.0}, "init_std"),
    ({"embed_scale": -2.0}, "embed_scale"), ({"d_model": 64, "n_heads": 5}, "n_heads"),
])
def test_bad_fields_name_themselves(fields, argument):
    with pytest.raises(ValueError, match=argument):
        LinscanConfig(**fields)


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "is not a JSON config file"), ("[1, 2]", "expected a JSON object"),
    ('{"d_model": 0}', "d_model: expected a positive int"), ('{"bogus": 1}', "unknown field"),
    ('{"n_layers": "2"}', "n_layers"),
])
def test_bad_config_files_name_the_file(tmp_path, text, fragment):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=fragment) as info:
        LinscanConfig.load(path)
    assert str(path) in str(info.value)


def test_saved_config_round_trips(tmp_path):
    config = LinscanConfig(d_model=32, n_heads=2, n_layers=2, pattern="DA")
    config.save(tmp_path / "config.json")
    assert LinscanConfig.load(tmp_path / "config.json") == config
