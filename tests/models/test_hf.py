"""Hugging Face integration: Auto classes, save/load round trip, generate == linscan's greedy generate,
and a core library that imports without transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on busy cores their barriers stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("transformers")
    import linscan.models.hf as hf

    return hf


def make(hf, pattern: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = hf.LinscanHFConfig(vocab_size=61, d_model=32, n_layers=max(2, len(pattern)), n_heads=2,
                                pattern=pattern, mlp_ratio=2.0, **overrides)
    return hf.LinscanHFForCausalLM(config).eval()


def prompt(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, 61, shape, generator=torch.Generator().manual_seed(seed))


def test_core_imports_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import linscan, linscan.models, linscan.nn, linscan.ops\n"
            "try:\n    import linscan.models.hf\nexcept ImportError as err:\n    print(err)\n"
            "else:\n    raise SystemExit('linscan.models.hf imported without transformers')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pip install transformers" in done.stdout


@pytest.mark.parametrize("pattern,overrides", [
    ("NRDA", {}),  # retnet and lightning: decay buffers that are not in the checkpoint
    ("GA", {"tie_embeddings": False, "mixer_options": {"attention": {"window": 4}}}),
    ("OA", {"aux_loss_coef": 0.05}),  # mixture of memories: state per (sequence, memory)
], ids=["tied", "untied-options", "mom"])
def test_auto_classes_round_trip(hf, tmp_path, pattern, overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    model, ids = make(hf, pattern, **overrides), prompt(2, 9)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "linscan"
    assert (tmp_path / "model.safetensors").exists()
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, hf.LinscanHFConfig)
    assert config.to_linscan() == model.config.to_linscan()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, hf.LinscanHFForCausalLM)
    tied = loaded.model.head.weight is loaded.model.embed.weight
    assert tied == model.config.tie_embeddings
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_config_aliases_and_validation(hf):
    config = hf.LinscanHFConfig(hidden_size=48, num_attention_heads=3, tie_word_embeddings=False)
    assert (config.d_model, config.n_heads, config.tie_embeddings) == (48, 3, False)
    assert config.hidden_size == 48 and config.tie_word_embeddings is False
    with pytest.raises(ValueError, match="pattern"):
        hf.LinscanHFConfig(pattern="DQ")


@pytest.mark.parametrize("pattern", ["D", "DA", "OA"])
def test_generate_equals_linscan_greedy(hf, pattern):
    model, ids = make(hf, pattern), prompt(2, 6)
    lengths = []
    hook = model.model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    out = model.generate(ids, max_new_tokens=10, do_sample=False)
    hook.remove()
    assert lengths == [6] + [1] * 9  # the prompt once, then one token a step through the cache
    assert torch.equal(out, model.model.generate(ids, 10, temperature=0))
    assert torch.equal(model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False), out)
    assert torch.equal(model.generate(ids, max_new_tokens=10, do_sample=True, top_k=1), out)


def test_generate_left_padded_batch_equals_separate_prompts(hf):
    model = make(hf, "DA").double()
    short, long = prompt(1, 3, seed=2), prompt(1, 6, seed=3)
    ids = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1), long])  # (2, 6)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out[0, 6:], model.model.generate(short, 6, temperature=0)[0, 3:])
    assert torch.equal(out[1, 6:], model.model.generate(long, 6, temperature=0)[0, 6:])


def test_beam_search_reorders_the_cache(hf):
    model, ids = make(hf, "DA"), prompt(1, 5)
    beams = dict(max_new_tokens=6, num_beams=3, do_sample=False)
    assert torch.equal(model.generate(ids, **beams), model.generate(ids, **beams, use_cache=False))


def test_loss_takes_unshifted_labels(hf):
    model, ids = make(hf, "DA"), prompt(2, 9)
    labels = ids.clone()
    labels[0, :3] = -100
    shifted = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)
    torch.testing.assert_close(model(ids, labels=labels).loss, model.model(ids, labels=shifted).loss)
