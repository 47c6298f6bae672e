"""The Liger mixer against an independent float64 per-token reference (outputs and input gradients,
every recurrence, grouped-query heads, with and without the sliding-window branch); its relation to
``Attention`` (same parameters; recurrent_weight 0 is sliding-window attention); decoding, packed
sequences and carried states with a window shorter than the sequence; option errors; and
``linscan.convert.liger``: a model's attention layers become Liger layers on the same tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from linscan.convert import from_llama, liger
from linscan.models import LinscanConfig, LinscanForCausalLM
from linscan.nn.mixers import Attention, Liger
from linscan.train.checkpoint import load_model, save_model

D_MODEL, N_HEADS = 32, 2
REFERENCE_TOL = dict(rtol=1e-10, atol=1e-10)   # float64, per-token loop vs chunked scans
STATE_TOL = dict(rtol=1e-10, atol=1e-10)       # float64: decode / split / packed vs one forward
LOGITS_TOL = dict(rtol=0.0, atol=1e-5)         # float32 models


def inputs(B: int, T: int, seed: int = 1, scale: float = 2.0) -> torch.Tensor:
    """Inputs large enough that the gates and the softmax feature maps are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, T, D_MODEL, generator=g, dtype=torch.float64)


def make(seed: int = 0, n_heads: int = N_HEADS, **options) -> Liger:
    torch.manual_seed(seed)
    return Liger(D_MODEL, n_heads, **options).double()


# ---------------------------------------------------------------- the float64 reference


def rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """Half-split rotary embedding of x [B, T, H, D] at positions 0 .. T-1 (Llama's rotate_half)."""
    T, D = x.shape[1], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)            # (D/2,)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq               # (T, D/2)
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def reference(m: Liger, x: torch.Tensor) -> torch.Tensor:
    """Liger's output for x [B, T, d_model], token by token, from the weights alone (float64)."""
    B, T, _ = x.shape
    H, Hkv, D = m.n_heads, m.n_kv_heads, m.head_dim

    def linear(layer, t):
        y = t @ layer.weight.T
        return y if layer.bias is None else y + layer.bias

    q = linear(m.q_proj, x).view(B, T, H, D)
    k = linear(m.k_proj, x).view(B, T, Hkv, D).repeat_interleave(H // Hkv, dim=2)   # (B, T, H, D)
    v = linear(m.v_proj, x).view(B, T, Hkv, D).repeat_interleave(H // Hkv, dim=2)

    # the recurrent branch, on q and k before RoPE
    S = x.new_zeros(B, H, D, D)
    o_rec = []
    for t in range(T):
        qt, kt, vt = q[:, t], k[:, t], v[:, t]                                    # (B, H, D)
        if m.recurrence == "gla":
            decay = torch.exp(F.logsigmoid(kt) / 16)[..., :, None]                # (B, H, D, 1)
            k_feat = kt.softmax(-1)
            S = decay * S + k_feat[..., :, None] * vt[..., None, :]
        elif m.recurrence == "hgrn2":
            decay = torch.sigmoid(kt)[..., :, None]                               # exp(logsigmoid k)
            k_feat = 1 - torch.sigmoid(kt)
            S = decay * S + k_feat[..., :, None] * vt[..., None, :]
        else:  # gated_deltanet, beta = 1
            decay = torch.exp(F.logsigmoid(kt.mean(-1)) / 16)[..., None, None]    # (B, H, 1, 1)
            k_feat = kt.softmax(-1)
            k_feat = k_feat / k_feat.norm(dim=-1, keepdim=True)
            erase = torch.eye(D, dtype=x.dtype) - k_feat[..., :, None] * k_feat[..., None, :]     # I - k k^T
            S = decay * erase @ S + k_feat[..., :, None] * vt[..., None, :]
        o_rec.append(torch.einsum("bhkv,bhk->bhv", S, qt.softmax(-1)))
    o = torch.stack(o_rec, dim=1)                                                 # (B, T, H, D)

    if m.window is not None:  # softmax over the keys at (t - w, t], RoPE, scale 1/sqrt(D)
        qr, kr = rope(q, m.rotary.base), rope(k, m.rotary.base)
        o_swa = torch.empty_like(o)
        for t in range(T):
            lo = max(0, t - m.window + 1)
            scores = torch.einsum("bhd,bshd->bhs", qr[:, t], kr[:, lo : t + 1]) / math.sqrt(D)
            o_swa[:, t] = torch.einsum("bhs,bshd->bhd", scores.softmax(-1), v[:, lo : t + 1])
        r = m.recurrent_weight
        o = (1 - r) * o_swa + r * o
    return o.reshape(B, T, H * D) @ m.o_proj.weight.T


REF_CASES = [dict(recurrence=rec, window=w, recurrent_weight=r, n_kv_heads=1)
             for rec in ("gla", "hgrn2", "gated_deltanet") for w in (None, 5) for r in (0.5, 0.3)
             if w is not None or r == 0.5]          # without a window r plays no part
REF_CASES += [dict(recurrence="gla", window=5, recurrent_weight=0.5, n_kv_heads=None, qkv_bias=True),
              dict(recurrence="gated_deltanet", window=5, recurrent_weight=0.5, n_kv_heads=2, n_heads=4)]
REF_IDS = ["-".join(f"{k}={v}" for k, v in c.items()) for c in REF_CASES]


@pytest.mark.parametrize("options", REF_CASES, ids=REF_IDS)
def test_matches_reference(options):
    m = make(**options)
    if options.get("qkv_bias"):
        with torch.no_grad():
            for layer in (m.q_proj, m.k_proj, m.v_proj):
                layer.bias.normal_()
    x = inputs(2, 12).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, state = m(x)
    y_ref = reference(m, x_ref)
    torch.testing.assert_close(y, y_ref, **REFERENCE_TOL)
    cotangent = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (y * cotangent).sum().backward()
    (y_ref * cotangent).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, **REFERENCE_TOL)
    assert state["S"].dtype == torch.float64 and state["S"].shape == (2, m.n_heads, m.head_dim, m.head_dim)
    assert set(state) == ({"S"} if options["window"] is None else {"S", "k", "v", "pos"})


def test_reference_branches_matter():
    """The test above can fail: each branch moves the output by far more than its tolerance."""
    x = inputs(2, 12)
    base = make(recurrence="gla", window=5, recurrent_weight=0.5, n_kv_heads=1)
    y = base(x)[0]
    for changed in (dict(recurrent_weight=0.3), dict(window=4), dict(window=None), dict(recurrence="hgrn2"),
                    dict(gate_normalizer=8.0)):
        other = make(**(dict(recurrence="gla", window=5, recurrent_weight=0.5, n_kv_heads=1) | changed))
        assert (other(x)[0] - y).abs().max() > 1e-4, changed


# ---------------------------------------------------------------- Liger and Attention


@pytest.mark.parametrize("recurrence", ["gla", "gated_deltanet"])
def test_recurrent_weight_zero_is_sliding_window_attention(recurrence):
    liger_layer = make(recurrence=recurrence, window=4, recurrent_weight=0, n_kv_heads=1)
    attention = Attention(D_MODEL, N_HEADS, window=4, n_kv_heads=1).double()
    attention.load_state_dict(liger_layer.state_dict(), strict=True)
    x = inputs(2, 15)
    y, state = liger_layer(x)
    y_att, state_att = attention(x)
    torch.testing.assert_close(y, y_att, rtol=0, atol=1e-12)
    for key in ("k", "v", "pos"):
        assert torch.equal(state[key], state_att[key]), key
    # carried on: the next chunk reads the same cache
    x2 = inputs(2, 6, seed=2)
    torch.testing.assert_close(liger_layer(x2, state)[0], attention(x2, state_att)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("options", [dict(), dict(n_kv_heads=1), dict(qkv_bias=True, rope_base=500.0)])
def test_state_dicts_interchange(options):
    attention = Attention(D_MODEL, N_HEADS, **options)
    liger_layer = Liger(D_MODEL, N_HEADS, **options)
    assert {k: v.shape for k, v in attention.state_dict().items()} == \
        {k: v.shape for k, v in liger_layer.state_dict().items()}
    liger_layer.load_state_dict(attention.state_dict(), strict=True)
    torch.manual_seed(3)
    fresh = Attention(D_MODEL, N_HEADS, **options)
    fresh.load_state_dict(liger_layer.state_dict(), strict=True)
    for key, value in attention.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert sum(p.numel() for p in liger_layer.parameters()) == sum(p.numel() for p in attention.parameters())


# ---------------------------------------------------------------- decode, packed, carried: window < T

WINDOW_CASES = [dict(recurrence=rec, window=4, n_kv_heads=1) for rec in ("gla", "hgrn2", "gated_deltanet")]
WINDOW_IDS = [c["recurrence"] for c in WINDOW_CASES]


def assert_states(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for key, e in expected.items():
        assert actual[key].shape == e.shape, f"{what} state[{key!r}] shape"
        torch.testing.assert_close(actual[key], e, msg=lambda msg: f"{what} state[{key!r}]: {msg}", **STATE_TOL)


@pytest.mark.parametrize("options", WINDOW_CASES, ids=WINDOW_IDS)
def test_decode_keeps_a_window_sized_cache(options):
    m, x = make(**options), inputs(2, 30)
    y, state = m(x)
    steps, s = [], None
    for t in range(30):
        y_t, s = m(x[:, t : t + 1], s)
        steps.append(y_t)
        assert s["k"].shape[1] <= options["window"] - 1 and s["v"].shape[1] <= options["window"] - 1, t
    torch.testing.assert_close(torch.cat(steps, dim=1), y, **STATE_TOL)
    assert s["k"].shape == (2, options["window"] - 1, 1, 16)
    assert s["pos"].tolist() == [30, 30]
    assert_states(s, state, "decode")


@pytest.mark.parametrize("options", WINDOW_CASES, ids=WINDOW_IDS)
def test_packed_sequences_equal_separate_runs(options):
    m, lengths = make(**options), [9, 2, 13, 6]
    x = inputs(1, sum(lengths), seed=2)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    init = m(inputs(len(lengths), 7, seed=3))[1]              # a carried state, cache full to the window
    y, state = m(x, init, cu_seqlens=cu)
    for n in range(len(lengths)):
        row = {key: s[n : n + 1] for key, s in init.items()}
        y_n, s_n = m(x[:, cu[n] : cu[n + 1]], row)
        torch.testing.assert_close(y[:, cu[n] : cu[n + 1]], y_n, **STATE_TOL)
        assert_states({key: s[n : n + 1] for key, s in state.items()}, s_n, f"sequence {n}")


@pytest.mark.parametrize("split", [2, 7, 18])
@pytest.mark.parametrize("options", WINDOW_CASES, ids=WINDOW_IDS)
def test_split_and_carry_equals_one_forward(options, split):
    m, x = make(**options), inputs(2, 19)
    y, state = m(x)
    y1, s1 = m(x[:, :split])
    y2, s2 = m(x[:, split:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, **STATE_TOL)
    assert_states(s2, state, "split")


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("options,name", [
    (dict(recurrence="foo"), "recurrence"),
    (dict(recurrence="GLA"), "recurrence"),
    (dict(recurrent_weight=1.5), "recurrent_weight"),
    (dict(recurrent_weight=-0.1), "recurrent_weight"),
    (dict(recurrent_weight=True), "recurrent_weight"),
    (dict(recurrent_weight="0.5"), "recurrent_weight"),
    (dict(n_kv_heads=3), "n_kv_heads"),
    (dict(window=0), "window"),
    (dict(gate_normalizer=0), "gate_normalizer"),
])
def test_bad_options_name_the_argument(options, name):
    with pytest.raises(ValueError, match=f"^{name}: "):
        Liger(D_MODEL, N_HEADS, **options)


# ---------------------------------------------------------------- linscan.convert.liger


def source_model(pattern: str = "A", seed: int = 0, **config) -> LinscanForCausalLM:
    torch.manual_seed(seed)
    fields = dict(vocab_size=64, d_model=32, n_layers=4, pattern=pattern, n_heads=2,
                  mixer_options={"attention": {"n_kv_heads": 1}})
    return LinscanForCausalLM(LinscanConfig(**(fields | config))).eval()


def tokens(B: int = 2, T: int = 11, seed: int = 1, vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def test_conversion_copies_every_tensor():
    model = source_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = liger(model, recurrence="hgrn2", window=8, recurrent_weight=0.25)
    assert converted.config.pattern == "IIII"
    src, dst = model.state_dict(), converted.state_dict()
    assert list(src) == list(dst)
    for name, tensor in src.items():
        assert torch.equal(dst[name], tensor) and dst[name].dtype == tensor.dtype, name
        assert dst[name].data_ptr() != tensor.data_ptr(), f"{name} shared with the source"
    assert converted.num_parameters() == model.num_parameters()
    assert converted.head.weight is converted.embed.weight            # still tied
    for block in converted.blocks:
        layer = block.mixer
        assert type(layer) is Liger
        assert (layer.recurrence, layer.window, layer.recurrent_weight, layer.n_kv_heads) == ("hgrn2", 8, 0.25, 1)
    # the source is untouched, and independent of the copy
    with torch.no_grad():
        for p in converted.parameters():
            p.add_(1.0)
    assert model.config.pattern == "A"
    assert all(type(b.mixer) is Attention for b in model.blocks)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    # and it computes something else than the teacher
    x = tokens()
    assert not torch.allclose(liger(model)(x).logits, model(x).logits, atol=1e-3)
    # a float64 model converts to a float64 model, still bit for bit
    model64 = source_model().double()
    converted64 = liger(model64)
    for name, tensor in model64.state_dict().items():
        assert converted64.state_dict()[name].dtype == torch.float64, name
        assert torch.equal(converted64.state_dict()[name], tensor), name


def test_keep_attention_every():
    model = source_model()
    converted = liger(model, keep_attention_every=2, window=4)
    assert converted.config.pattern == "IAIA"
    x = inputs(2, 9).float()
    for i, (ours, theirs) in enumerate(zip(converted.blocks, model.blocks)):
        if i % 2:
            assert type(ours.mixer) is Attention and ours.mixer.window is None
            assert torch.equal(ours.mixer(x)[0], theirs.mixer(x)[0]), i
        else:
            assert type(ours.mixer) is Liger
            assert not torch.allclose(ours.mixer(x)[0], theirs.mixer(x)[0], atol=1e-4), i
    assert liger(model, keep_attention_every=1).config.pattern == "AAAA"
    assert liger(model, keep_attention_every=5).config.pattern == "IIII"
    # other letters stay; only the A layers count
    hybrid = source_model("DA", n_layers=6)
    assert liger(hybrid, keep_attention_every=2).config.pattern == "DIDADI"


def test_conversion_refusals():
    with pytest.raises(ValueError, match="^model: .*attention"):
        liger(source_model("D"))
    with pytest.raises(ValueError, match="^recurrence: "):
        liger(source_model(), recurrence="mamba")
    with pytest.raises(ValueError, match="^keep_attention_every: "):
        liger(source_model(), keep_attention_every=0)
    windowed = source_model(mixer_options={"attention": {"window": 8}})
    with pytest.raises(ValueError, match="^model: .*window"):
        liger(windowed)


@pytest.mark.parametrize("recurrence", ["gla", "hgrn2"])
def test_recurrent_weight_zero_converts_to_the_same_function(recurrence):
    """With r = 0 and a window longer than the text, a Liger layer is the attention layer it came
    from: the whole converted model computes the source's logits (RoPE base, biases and grouped
    heads carried over)."""
    model = source_model(mixer_options={"attention": {"n_kv_heads": 1, "rope_base": 500.0, "qkv_bias": True}})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.normal_()
    converted = liger(model, recurrence=recurrence, window=16, recurrent_weight=0)
    assert all(b.mixer.rotary.base == 500.0 and b.mixer.q_proj.bias is not None for b in converted.blocks)
    x = tokens(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(converted(x).logits, model(x).logits, **LOGITS_TOL)
        assert not torch.allclose(liger(model, window=15, recurrent_weight=0)(x).logits, model(x).logits,
                                  atol=1e-3)


def test_pure_liger_has_only_the_recurrent_state():
    converted = liger(source_model(), window=None)
    x = tokens(2, 9)
    out = converted(x)
    assert all(set(s) == {"S"} for s in out.state)
    assert all(b.mixer.window is None for b in converted.blocks)
    # and the state carries: decode from it equals the one forward
    full = converted(torch.cat([x, tokens(2, 3, seed=5)], dim=1)).logits
    rest = converted(tokens(2, 3, seed=5), state=out.state).logits
    torch.testing.assert_close(rest, full[:, 9:], **LOGITS_TOL)


def random_llama(seed: int = 0):
    """A small random Hugging Face Llama with weights far from HF's near-zero init."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
        eos_token_id=None, bos_token_id=None, pad_token_id=None)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            norm = name.endswith("norm.weight")
            p.copy_(1 + 0.3 * torch.randn_like(p) if norm else torch.randn_like(p) / p.shape[-1] ** 0.5)
    return hf


@pytest.mark.parametrize("recurrence", ["gla", "gated_deltanet"])
def test_converted_llama_generates_and_round_trips(recurrence, tmp_path):
    model = liger(from_llama(random_llama()), recurrence=recurrence, window=4)
    assert model.config.pattern == "II"
    prompt = tokens(2, 5, seed=6)
    generated = model.generate(prompt, 6, temperature=0)
    chain = prompt
    with torch.no_grad():
        for _ in range(6):           # the whole sequence again each time: no state carried
            chain = torch.cat([chain, model(chain).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, chain)
    save_model(tmp_path / "m", model)
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config and type(loaded.blocks[0].mixer) is Liger
    with torch.no_grad():
        assert torch.equal(loaded(chain).logits, model(chain).logits)
