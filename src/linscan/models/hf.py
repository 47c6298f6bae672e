"""Hugging Face integration: a config and a causal LM that register with transformers' Auto classes.

    import linscan.models.hf                     # registers model_type "linscan"
    from transformers import AutoModelForCausalLM
    model = LinscanHFForCausalLM(LinscanHFConfig(pattern="DDDA", n_layers=4))
    model.save_pretrained(path)                  # config.json + model.safetensors (tied head not stored twice)
    model = AutoModelForCausalLM.from_pretrained(path)
    out = model.generate(input_ids, max_new_tokens=32, do_sample=False)

Written against the transformers 5 generation API, where the cache travels under the
keyword ``cache``. The cache is :class:`LinscanCache`, a plain object holding the list of
layer states of :class:`~linscan.models.LinscanForCausalLM` (recurrent states and KV
caches): ``forward`` returns it, ``generate`` passes it back and, once it exists, feeds
only the newest token. The model tells ``generate`` not to build a ``DynamicCache``
(``_supports_default_dynamic_cache``) and that its state cannot be rolled back
(``_is_stateful``: no assisted decoding).

Only this module imports transformers; the rest of linscan works without it.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

try:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast
except ImportError as err:  # pragma: no cover - exercised by the import test in a subprocess
    raise ImportError("linscan.models.hf needs transformers: pip install transformers") from err

from .config import LinscanConfig
from .lm import Block, LinscanForCausalLM

_FIELDS = [f.name for f in dataclasses.fields(LinscanConfig)]


class LinscanHFConfig(PreTrainedConfig):
    """:class:`~linscan.models.LinscanConfig` as a transformers config (model_type ``"linscan"``).

    Takes the LinscanConfig fields as keywords (validated by LinscanConfig, same defaults),
    plus transformers' own (``bos_token_id``, ``eos_token_id``, ...). The usual
    transformers names are aliases: ``hidden_size`` = d_model, ``num_hidden_layers`` =
    n_layers, ``num_attention_heads`` = n_heads, ``tie_word_embeddings`` = tie_embeddings.
    """

    model_type = "linscan"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers",
                     "num_attention_heads": "n_heads", "tie_word_embeddings": "tie_embeddings"}

    def __init__(self, **kwargs):
        for alias, name in self.attribute_map.items():
            if alias in kwargs:
                kwargs.setdefault(name, kwargs.pop(alias))
        core = LinscanConfig(**{name: kwargs.pop(name) for name in _FIELDS if name in kwargs})
        for name, value in core.to_dict().items():
            setattr(self, name, value)
        super().__init__(**kwargs)

    @classmethod
    def from_linscan(cls, config: LinscanConfig, **kwargs) -> "LinscanHFConfig":
        return cls(**config.to_dict(), **kwargs)

    def to_linscan(self) -> LinscanConfig:
        return LinscanConfig(**{name: getattr(self, name) for name in _FIELDS})


class LinscanCache:
    """The state of a :class:`LinscanHFForCausalLM` between forward calls.

    ``state``: one entry per layer, as in ``LinscanForCausalLM`` (dicts of tensors whose
    leading axis is the batch row); ``seq_length``: tokens read so far. Updated in place
    by every forward it is passed to.
    """

    is_compileable = False
    is_croppable = False  # a recurrent state cannot drop its last tokens

    def __init__(self, state: list, seq_length: int = 0):
        self.state, self.seq_length = state, seq_length

    def __len__(self) -> int:
        return len(self.state)

    @property
    def is_linear(self) -> list[bool]:
        # False: this cache counts its tokens, so generate may cut a resumed prompt to the unseen part
        return [False] * len(self.state)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seq_length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep batch rows ``beam_idx`` (beam search)."""
        self.state = [{key: value.index_select(0, beam_idx.to(value.device)) for key, value in layer.items()}
                      for layer in self.state]


class LinscanHFForCausalLM(PreTrainedModel, GenerationMixin):
    """:class:`~linscan.models.LinscanForCausalLM` (``self.model``) as a transformers causal LM.

    forward(input_ids [B, T], attention_mask=None, cache=None, labels=None, use_cache=None)
        -> CausalLMOutputWithPast(loss, logits [B, T, vocab], cache)
    ``labels`` follow transformers: unshifted (usually the input ids), -100 = not scored.
    ``attention_mask`` [B, past + T]: rows with padding among the T new tokens are read as
    a packed batch of their unpadded tokens (left-padded prompts generate as if alone);
    logits at padded positions are zero.
    """

    config_class = LinscanHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}
    _is_stateful = True

    def __init__(self, config: LinscanHFConfig):
        super().__init__(config)
        self.model = LinscanForCausalLM(config.to_linscan())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate must not build a DynamicCache: forward makes a LinscanCache

    def _init_weights(self, module):
        # Parameters are initialised by LinscanForCausalLM (each mixer as its paper says) or
        # loaded; only non-persistent buffers (fixed decay rates) come back empty from a load
        # on the meta device, so they are taken from a freshly built layer.
        for i, block in enumerate(self.model.blocks):
            if module is block.mixer and module._non_persistent_buffers_set:
                with torch.device("cpu"):
                    fresh = Block(self.model.config, i).mixer
                for name in module._non_persistent_buffers_set:
                    getattr(module, name).copy_(getattr(fresh, name))

    def get_input_embeddings(self):
        return self.model.embed

    def get_output_embeddings(self):
        return self.model.head

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                cache: LinscanCache | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, return_dict: bool | None = None, **kwargs):
        """See the class docstring. Other keywords that transformers passes are not used,
        except the loss options (``num_items_in_batch``)."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("inputs_embeds: not supported, pass input_ids")
        B, T = input_ids.shape
        state = None if cache is None else cache.state
        mask = None if attention_mask is None else attention_mask[:, -T:].bool()
        if mask is not None and not bool(mask.all()):
            logits, state = self._forward_padded(input_ids, mask, state)
        else:
            out = self.model(input_ids, state=state)
            logits, state = out.logits, out.state
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        if use_cache is False:
            cache = None
        elif cache is None:
            cache = LinscanCache(state, T)
        else:
            cache.state, cache.seq_length = state, cache.seq_length + T
        out = CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)
        return out if return_dict is not False else out.to_tuple()

    def _forward_padded(self, input_ids, mask, state):
        """Rows with padding: one packed row of the kept tokens, a sequence per row (cu_seqlens)."""
        B, T = input_ids.shape
        lengths = mask.sum(1)  # (B,)
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)  # (B + 1,)
        out = self.model(input_ids[mask][None], state=state, cu_seqlens=cu)  # logits (1, sum(lengths), vocab)
        logits = out.logits.new_zeros(B, T, out.logits.shape[-1])
        logits[mask] = out.logits[0]
        return logits, out.state


def register() -> None:
    """Register the config and the model with AutoConfig and AutoModelForCausalLM (idempotent)."""
    AutoConfig.register(LinscanHFConfig.model_type, LinscanHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(LinscanHFConfig, LinscanHFForCausalLM, exist_ok=True)


register()
