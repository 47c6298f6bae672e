"""``linscan.convert.from_llama``: a random Hugging Face Llama becomes a linscan model of attention
layers computing the same function (logits, greedy generation), every weight copied bit for bit,
from a model object or a saved folder; what linscan cannot reproduce is refused by name."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from linscan.convert import from_llama, llama, load_source  # noqa: E402

LOGITS_TOL = dict(rtol=0.0, atol=1e-5)   # float32, same weights, same op order up to SDPA / matmul blocking
VOCAB = 64


def llama_config(**overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False,
                  rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
                  eos_token_id=None, bos_token_id=None, pad_token_id=None)
    return transformers.LlamaConfig(**(fields | overrides))


def random_llama(seed: int = 0, **overrides):
    """A LlamaForCausalLM with weights large enough that the logits are far from uniform (HF's
    0.02 init makes every greedy choice a near tie) and norm weights that are not all ones."""
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(llama_config(**overrides)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return hf


def prompt(B: int = 2, T: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


CASES = [dict(num_key_value_heads=kv, tie_word_embeddings=tie) for kv in (2, 4) for tie in (True, False)]
IDS = [f"kv{c['num_key_value_heads']}-{'tied' if c['tie_word_embeddings'] else 'untied'}" for c in CASES]


@pytest.mark.parametrize("overrides", CASES, ids=IDS)
def test_logits_equal_hf(overrides):
    hf = random_llama(**overrides)
    model = from_llama(hf)
    x = prompt(3, 13)
    with torch.no_grad():
        expected, actual = hf(x).logits, model(x).logits
    assert expected.std() > 0.5                     # a function worth comparing
    torch.testing.assert_close(actual, expected, **LOGITS_TOL)
    assert not model.training


def test_head_dim_other_than_width_over_heads():
    hf = random_llama(head_dim=16)                     # 4 heads of 16 on a width of 32
    model = from_llama(hf)
    assert model.blocks[0].mixer.q_proj.weight.shape == (64, 32)
    x = prompt()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, **LOGITS_TOL)


@pytest.mark.parametrize("overrides", CASES, ids=IDS)
def test_weights_copied_bit_for_bit(overrides):
    hf = random_llama(**overrides)
    model = from_llama(hf)
    theirs, ours = hf.state_dict(), model.state_dict()
    pairs = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "head.weight": "lm_head.weight"}
    for i in range(hf.config.num_hidden_layers):
        pairs |= {f"blocks.{i}.{o}": f"model.layers.{i}.{t}" for o, t in llama.LAYER_WEIGHTS.items()}
    assert set(pairs) == set(ours), "a linscan tensor without a Llama counterpart"
    for o, t in pairs.items():
        assert ours[o].dtype == theirs[t].dtype and torch.equal(ours[o], theirs[t]), o
    assert model.num_parameters() == sum(p.numel() for p in hf.parameters())
    assert (model.head.weight is model.embed.weight) == overrides["tie_word_embeddings"]
    kv = overrides["num_key_value_heads"]
    attention = model.blocks[0].mixer
    assert (attention.n_heads, attention.n_kv_heads, attention.head_dim) == (4, kv, 8)
    assert attention.rotary.base == 500000.0


@pytest.mark.parametrize("overrides", CASES[:2], ids=IDS[:2])
def test_greedy_generation_equals_hf(overrides):
    hf = random_llama(seed=3, **overrides)
    model = from_llama(hf)
    x = prompt(2, 5, seed=4)
    ours = model.generate(x, 8, temperature=0)
    with torch.no_grad():
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=8)
    assert ours.shape == (2, 13)
    assert torch.equal(ours, theirs)


def test_from_folder(tmp_path):
    hf = random_llama(seed=5)
    hf.save_pretrained(tmp_path)
    x = prompt()
    with torch.no_grad():
        expected = hf(x).logits
        from_path = from_llama(tmp_path)(x).logits
        from_str = from_llama(str(tmp_path))(x).logits
        loaded = load_source(tmp_path)
        via_source = loaded(x).logits
    torch.testing.assert_close(from_path, expected, **LOGITS_TOL)
    assert torch.equal(from_str, from_path)
    assert torch.equal(via_source, from_path)
    assert loaded.config.pattern == "A" and not loaded.training


def test_scaled_rope_refused():
    hf = transformers.LlamaForCausalLM(llama_config(
        max_position_embeddings=16384,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}))
    with pytest.raises(ValueError, match="rope_type") as info:
        from_llama(hf)
    assert "llama3" in str(info.value)


def test_attention_bias_refused():
    hf = transformers.LlamaForCausalLM(llama_config(attention_bias=True))
    with pytest.raises(ValueError, match="attention_bias"):
        from_llama(hf)


def test_other_model_type_refused(tmp_path):
    hf = random_llama()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"model_type": "mistral"}))
    with pytest.raises(ValueError, match="'mistral'"):
        load_source(tmp_path)


def test_not_a_folder_refused(tmp_path):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="not a folder"):
        from_llama(file)
    with pytest.raises(ValueError, match="not a folder"):
        load_source(file)
    with pytest.raises(ValueError, match="not a folder"):
        load_source(tmp_path / "missing")
