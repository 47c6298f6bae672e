"""LoRA through peft (``apply_lora``, ``lora_parameters``, ``merge_lora``) on a Liger-converted model:
the adapters change nothing until trained, only they train, their count is the hand-computed one,
and merging folds ``W + (alpha / r) B A`` back into plain Linears with the original names and shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")

from linscan.convert import apply_lora, liger, lora_parameters, merge_lora  # noqa: E402
from linscan.models import LinscanConfig, LinscanForCausalLM  # noqa: E402

LOGITS_TOL = dict(rtol=0.0, atol=1e-5)   # float32: merged W + BA vs W x + B (A x)
D_MODEL, N_HEADS, N_KV_HEADS, N_LAYERS, HEAD_DIM = 32, 2, 1, 3, 16


def converted_model(seed: int = 0, **liger_options) -> LinscanForCausalLM:
    torch.manual_seed(seed)
    config = LinscanConfig(vocab_size=64, d_model=D_MODEL, n_layers=N_LAYERS, pattern="A", n_heads=N_HEADS,
                           mixer_options={"attention": {"n_kv_heads": N_KV_HEADS}})
    return liger(LinscanForCausalLM(config), window=4, **liger_options).eval()


def tokens(B: int = 2, T: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(seed))


def randomise_b(model: nn.Module, seed: int = 2) -> None:
    """Give every adapter a non-zero B, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_adapters_change_nothing_at_step_zero():
    model, x = converted_model(), tokens()
    with torch.no_grad():
        before = model(x).logits
    assert apply_lora(model, rank=4) is model
    with torch.no_grad():
        after = model(x).logits
    assert torch.equal(after, before)


def test_only_adapters_train_and_their_count():
    model, rank = converted_model(keep_attention_every=3), 4
    total = model.num_parameters()
    apply_lora(model, rank=rank)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable)
    assert all(p.requires_grad for name, p in model.named_parameters() if ".lora_" in name)
    q_out, kv_out = N_HEADS * HEAD_DIM, N_KV_HEADS * HEAD_DIM
    per_layer = rank * (D_MODEL + q_out) + 2 * rank * (D_MODEL + kv_out)    # q, k, v: A [r, in] + B [out, r]
    assert lora_parameters(model) == N_LAYERS * per_layer == 4 * 160 * 3
    assert model.num_parameters() == total + lora_parameters(model)
    adapted = {name.rsplit(".", 1)[0] for name in trainable if ".lora_A." in name}
    assert len(adapted) == 3 * N_LAYERS, adapted          # every q, k, v, the kept attention layer's too
    assert not any("o_proj" in name or "mlp" in name for name in adapted)


@pytest.mark.parametrize("alpha", [None, 12.0])
def test_merge_gives_the_adapted_function(alpha):
    model, x, rank = converted_model(), tokens(), 4
    reference = {name: t.clone() for name, t in model.state_dict().items()}
    with torch.no_grad():
        base = model(x).logits
    apply_lora(model, rank=rank, alpha=alpha)
    randomise_b(model)
    layer = model.blocks[1].mixer.k_proj
    a, b = layer.lora_A["default"].weight.clone(), layer.lora_B["default"].weight.clone()
    with torch.no_grad():
        adapted = model(x).logits
    assert not torch.allclose(adapted, base, atol=1e-3), "the random B should change the function"
    assert merge_lora(model) is model
    with torch.no_grad():
        merged = model(x).logits
    torch.testing.assert_close(merged, adapted, **LOGITS_TOL)
    state = model.state_dict()
    assert list(state) == list(reference)
    assert all(state[k].shape == reference[k].shape for k in reference)
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in model.modules())
    assert type(model.blocks[1].mixer.k_proj) is nn.Linear
    assert all(p.requires_grad for p in model.parameters())
    scale = (rank if alpha is None else alpha) / rank
    torch.testing.assert_close(state["blocks.1.mixer.k_proj.weight"],
                               reference["blocks.1.mixer.k_proj.weight"] + scale * b @ a, rtol=0, atol=1e-6)
    for k in reference:             # only q, k, v moved
        if not k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            assert torch.equal(state[k], reference[k]), k


def test_bad_arguments():
    with pytest.raises(ValueError, match="^rank: "):
        apply_lora(converted_model(), rank=0)
    with pytest.raises(ValueError, match="^rank: "):
        apply_lora(converted_model(), rank=True)
    model = converted_model()
    with pytest.raises(ValueError, match="^targets: "):
        apply_lora(model, targets=("query", "mixer"))
    assert all(p.requires_grad for p in model.parameters()), "a refused call must leave the model as it was"
