"""A Hugging Face ``LlamaForCausalLM`` as a linscan model of attention layers (the same function).

The two stacks are the same pre-norm decoder: RMSNorm -> attention (RoPE, half-split layout,
grouped-query heads) -> residual -> RMSNorm -> SwiGLU -> residual, a final RMSNorm and a head.
Only this module (and only when it is called) imports transformers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models import LinscanConfig, LinscanForCausalLM

# linscan name <- Llama name, per layer i
LAYER_WEIGHTS = {
    "mixer_norm.weight": "input_layernorm.weight",
    "mixer.q_proj.weight": "self_attn.q_proj.weight",
    "mixer.k_proj.weight": "self_attn.k_proj.weight",
    "mixer.v_proj.weight": "self_attn.v_proj.weight",
    "mixer.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}


def _rope_theta(hf_config) -> float:
    """The rotary base; ValueError for a scaled RoPE (linscan's rotary has no scaling)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in (None, "default"):
        raise ValueError(f"llama: expected plain RoPE (rope_type 'default'), got rope_type {kind!r}; "
                         "scaled RoPE (llama3, yarn, linear, dynamic) is not supported")
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))


def llama_config(hf_config) -> LinscanConfig:
    """The :class:`LinscanConfig` of a ``transformers.LlamaConfig`` (every layer attention, "A").

    ValueError naming the field for what linscan's stack cannot reproduce: biases on the
    projections, a hidden activation other than SiLU, scaled RoPE."""
    for name, expected in (("attention_bias", False), ("mlp_bias", False), ("hidden_act", "silu")):
        value = getattr(hf_config, name, expected)
        if value != expected:
            raise ValueError(f"llama: expected {name} = {expected!r}, got {value!r}")
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    options = {"rope_base": _rope_theta(hf_config)}
    if kv_heads != heads:
        options["n_kv_heads"] = kv_heads
    return LinscanConfig(vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size,
                         n_layers=hf_config.num_hidden_layers, pattern="A", n_heads=heads, head_dim=head_dim,
                         mlp_hidden=hf_config.intermediate_size, norm_eps=float(hf_config.rms_norm_eps),
                         tie_embeddings=bool(hf_config.tie_word_embeddings), embed_scale=1.0,
                         mixer_options={"attention": options})


def from_llama(source, *, dtype: torch.dtype = torch.float32) -> LinscanForCausalLM:
    """A linscan model computing what a Llama computes, every weight copied bit for bit.

    source: a ``transformers.LlamaForCausalLM`` or a folder ``from_pretrained`` reads (a
        ``LlamaForCausalLM`` checkpoint: config.json + safetensors).
    dtype: the dtype of the returned model (the copy is exact when it is the source's).
    Returns a ``LinscanForCausalLM`` with pattern "A" (attention layers), in eval mode.
    """
    if isinstance(source, (str, Path)):
        from transformers import LlamaForCausalLM

        if not Path(source).is_dir():
            raise ValueError(f"source: expected a Hugging Face model folder, got {str(source)!r} (not a folder)")
        source = LlamaForCausalLM.from_pretrained(str(source), dtype=dtype)
    hf_config = getattr(source, "config", None)
    if getattr(hf_config, "model_type", None) != "llama":
        raise ValueError(f"source: expected a LlamaForCausalLM (model_type 'llama'), got "
                         f"{type(source).__name__} (model_type {getattr(hf_config, 'model_type', None)!r})")
    config = llama_config(hf_config)
    weights = source.state_dict()
    mapped = {"embed.weight": weights["model.embed_tokens.weight"], "norm.weight": weights["model.norm.weight"]}
    if not config.tie_embeddings:
        mapped["head.weight"] = weights["lm_head.weight"]
    for i in range(config.n_layers):
        for ours, theirs in LAYER_WEIGHTS.items():
            mapped[f"blocks.{i}.{ours}"] = weights[f"model.layers.{i}.{theirs}"]
    with torch.device("meta"):
        model = LinscanForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in mapped.items()}, strict=False)
    missing = [m for m in missing if not (config.tie_embeddings and m == "head.weight")]
    if missing or unexpected:    # a mapping bug, not a user error
        raise RuntimeError(f"llama: weights not mapped: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_embeddings:
        model.head.weight = model.embed.weight
    return model.eval()
