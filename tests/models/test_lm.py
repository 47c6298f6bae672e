"""The decoder LM for every mixer letter and two hybrids: decode == forward, split == one forward,
varlen == per sequence, generation == greedy by hand, sampling filters, loss masking, config and presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from linscan.models import LETTERS, PRESETS, LinscanConfig, LinscanForCausalLM, preset, sample

PATTERNS = [*LETTERS, "DA", "GMA"]
VOCAB = 61
TOL = dict(rtol=1e-8, atol=1e-8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on busy cores their barriers stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(pattern: str, seed: int = 0, **overrides) -> LinscanForCausalLM:
    """A small float64 model; one layer per letter, at least two."""
    torch.manual_seed(seed)
    config = LinscanConfig(vocab_size=VOCAB, d_model=32, n_layers=max(2, len(pattern)), n_heads=2,
                           pattern=pattern, mlp_ratio=2.0, **overrides)
    return LinscanForCausalLM(config).double().eval()


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def next_logits(model, state, ids):
    """Logits of one more token per row, ``ids`` [N], read through ``state``."""
    return model(ids[:, None], state=state).logits[:, -1]


@torch.no_grad()
@pytest.mark.parametrize("pattern", PATTERNS)
def test_decode_equals_forward(pattern):
    model, ids = make(pattern), tokens(2, 40)
    full = model(ids)
    assert full.logits.shape == (2, 40, VOCAB) and full.logits.dtype == torch.float64
    steps, state = [], None
    for t in range(ids.shape[1]):
        out = model(ids[:, t : t + 1], state=state)
        steps.append(out.logits)
        state = out.state
    torch.testing.assert_close(torch.cat(steps, dim=1), full.logits, **TOL)
    probe = tokens(2, seed=3)
    torch.testing.assert_close(next_logits(model, state, probe), next_logits(model, full.state, probe), **TOL)


@torch.no_grad()
@pytest.mark.parametrize("pattern", PATTERNS)
def test_split_equals_forward(pattern):
    model, ids = make(pattern), tokens(2, 40)
    full = model(ids)
    first = model(ids[:, :17])
    second = model(ids[:, 17:], state=first.state)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], dim=1), full.logits, **TOL)
    probe = tokens(2, seed=3)
    torch.testing.assert_close(next_logits(model, second.state, probe), next_logits(model, full.state, probe),
                               **TOL)


@torch.no_grad()
@pytest.mark.parametrize("pattern", PATTERNS)
def test_varlen_equals_per_sequence(pattern):
    model, lengths = make(pattern), [7, 13, 1, 19]
    seqs = [tokens(1, n, seed=10 + i) for i, n in enumerate(lengths)]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    packed = model(torch.cat(seqs, dim=1), cu_seqlens=cu)  # (1, sum(lengths), vocab)
    probe = tokens(len(lengths), seed=3)
    after_packed = next_logits(model, packed.state, probe)  # one row per sequence
    for n, seq in enumerate(seqs):
        alone = model(seq)
        torch.testing.assert_close(packed.logits[:, cu[n] : cu[n + 1]], alone.logits, **TOL,
                                   msg=lambda m: f"sequence {n}: {m}")
        torch.testing.assert_close(after_packed[n : n + 1], next_logits(model, alone.state, probe[n : n + 1]),
                                   **TOL, msg=lambda m: f"state of sequence {n}: {m}")


@torch.no_grad()
def greedy_by_hand(model, ids, n):
    """Greedy decoding with a full forward over the growing sequence, no state."""
    for _ in range(n):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("pattern", ["D", "DA"])
def test_generate_greedy_equals_full_forwards(pattern):
    model, prompt = make(pattern), tokens(2, 5)
    out = model.generate(prompt, 12, temperature=0)
    assert out.shape == (2, 17) and torch.equal(out[:, :5], prompt)
    assert torch.equal(out, greedy_by_hand(model, prompt, 12))


def test_generate_top_k_1_is_greedy():
    model, prompt = make("GA"), tokens(3, 4)
    sampled = model.generate(prompt, 10, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, model.generate(prompt, 10, temperature=0))


def test_sample_top_p_picks_from_the_nucleus():
    probs = torch.tensor([0.05, 0.4, 0.02, 0.3, 0.15, 0.08])  # by size: 1, 3, 4 (cumulative 0.85), 5, 0, 2
    rows = 4000
    # a different vocabulary order per row, so the scatter back from the sorted order is exercised
    perms = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(r)) for r in range(rows)])
    logits = probs.log()[perms] * 2.0  # temperature 2 undoes the factor
    picks = sample(logits, temperature=2.0, top_p=0.8, generator=torch.Generator().manual_seed(0))  # (rows, 1)
    assert picks.shape == (rows, 1)
    chosen = perms.gather(1, picks).squeeze(1)  # back to the original token ids
    counts = torch.bincount(chosen, minlength=6)
    assert counts[[0, 2, 5]].sum() == 0, counts  # outside the nucleus {1, 3, 4}
    assert torch.allclose(counts[[1, 3, 4]] / rows, probs[[1, 3, 4]] / 0.85, atol=0.03), counts
    greedy = sample(logits, top_p=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(perms.gather(1, greedy).squeeze(1), torch.ones(rows, dtype=torch.long))


def test_labels_minus_100_are_ignored():
    model, ids = make("DA"), tokens(2, 9)
    labels = tokens(2, 9, seed=2)
    labels[0, :4] = -100
    labels[1, 7] = -100
    out = model(ids, labels=labels)
    keep = labels != -100
    expected = F.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected.float())
    assert math.isfinite(out.loss.item())


def test_config_json_round_trip(tmp_path):
    config = LinscanConfig(vocab_size=100, d_model=48, n_layers=3, pattern="GPA", n_heads=3, head_dim=8,
                           mlp_ratio=0.0, tie_embeddings=False,
                           mixer_options={"attention": {"window": 16}, "deltaproduct": {"n_householder": 3}})
    config.save(tmp_path / "config.json")
    loaded = LinscanConfig.load(tmp_path / "config.json")
    assert loaded == config
    assert loaded.mixers == ["gla", "deltaproduct", "attention"]
    LinscanForCausalLM(loaded)  # the options reach the mixers


@pytest.mark.parametrize("kwargs,argument", [
    (dict(pattern="DXA"), "pattern"),
    (dict(pattern=""), "pattern"),
    (dict(n_heads=3), "n_heads"),
    (dict(n_heads=0), "n_heads"),
    (dict(head_dim=0), "head_dim"),
    (dict(mixer_options={"mamba": {}}), "mixer_options"),
    (dict(mixer_options={"attention": {"windw": 8}}), "mixer_options"),
], ids=["letter", "empty-pattern", "heads-divisor", "heads-zero", "head-dim-zero", "mixer-name", "option-name"])
def test_config_rejects_bad_values(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        LinscanConfig(d_model=32, **kwargs)


def test_config_rejects_unknown_fields(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"d_model": 32, "n_heads": 2, "d_modle": 64}')
    with pytest.raises(ValueError, match="d_modle"):
        LinscanConfig.load(path)


def test_presets_by_exact_name_only():
    assert preset("tiny") == LinscanConfig(**PRESETS["tiny"])
    assert preset("tiny", n_layers=2).n_layers == 2
    for name in ("Tiny", "tin", "tiny "):
        with pytest.raises(ValueError, match="preset") as err:
            preset(name)
        assert all(known in str(err.value) for known in PRESETS)
