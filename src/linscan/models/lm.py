"""The decoder language model: embeddings, a stack of (mixer, SwiGLU) blocks, a (tied) head.

Every block is pre-norm: x = x + mixer(norm(x)); x = x + mlp(norm(x)). The
mixer of layer i is the config pattern's letter i (repeated), so hybrids such
as "DDDA" (Gated DeltaNet with attention every fourth layer) are one string.
The state of the model is the list of the mixers' states: recurrent states
(constant size) for linear layers, KV caches for attention layers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import RMSNorm, SwiGLU, init_weights, sequence
from ..nn.mixers import MIXERS
from .config import LinscanConfig


class CausalLMOutput(NamedTuple):
    logits: torch.Tensor            # (B, T, vocab)
    state: list                     # one entry per layer, feed back for the next tokens
    loss: torch.Tensor | None = None    # cross-entropy + aux_loss_coef * aux_loss
    aux_loss: torch.Tensor | None = None  # mean load-balancing loss of the MoM layers (None without)


class Block(nn.Module):
    def __init__(self, config: LinscanConfig, layer_idx: int):
        super().__init__()
        name = config.mixers[layer_idx]
        self.mixer_norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = MIXERS[name](config.d_model, config.n_heads, head_dim=config.head_dim,
                                  layer_idx=layer_idx, **config.mixer_options.get(name, {}))
        self.mlp = None
        if config.mlp_ratio > 0:
            self.mlp_norm = RMSNorm(config.d_model, eps=config.norm_eps)
            self.mlp = SwiGLU(config.d_model, _mlp_hidden(config))

    def forward(self, x, state=None, cu_seqlens=None):
        y, state = self.mixer(self.mixer_norm(x), state, cu_seqlens)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, state


def _mlp_hidden(config: LinscanConfig) -> int:
    """SwiGLU width: ``mlp_hidden``, else mlp_ratio * d_model * 2/3 (same parameters as a GELU MLP),
    rounded up to 32."""
    if config.mlp_hidden is not None:
        return config.mlp_hidden
    hidden = int(config.mlp_ratio * config.d_model * 2 / 3)
    return -(-hidden // 32) * 32


class LinscanForCausalLM(nn.Module):
    """Decoder LM over a layer pattern of mixers.

    forward(input_ids [B, T] int64, state=None, cu_seqlens=None, labels=None)
        -> CausalLMOutput(logits [B, T, vocab], state, loss, aux_loss)
    ``labels`` [B, T] are the next tokens (already shifted), -100 = not scored. With
    mixture-of-memories layers the loss adds ``aux_loss_coef`` times their mean balance loss.
    """

    def __init__(self, config: LinscanConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as ``linscan.nn.init`` says: every Linear (head included) N(0, 1/fan_in),
        residual writes / sqrt(2 L), mixers' paper-specific gates kept; the embedding table
        N(0, (init_std / embed_scale)^2), so the first block reads inputs of RMS ``init_std``."""
        init_weights(self, n_layers=self.config.n_layers)
        nn.init.normal_(self.embed.weight, std=self.config.init_std / self.config.embed_scale)
        if self.config.tie_embeddings:
            self.head.weight = self.embed.weight

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] -> the first block's input [B, T, d_model] (table row * embed_scale)."""
        x = self.embed(input_ids)
        return x if self.config.embed_scale == 1 else x * self.config.embed_scale

    def forward(self, input_ids, state=None, cu_seqlens=None, labels=None) -> CausalLMOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape [B, T], got {list(input_ids.shape)}")
        sequence.refuse_state(self, state, cu_seqlens)
        state = state if state is not None else [None] * len(self.blocks)
        x = self.embed_tokens(input_ids)                              # (B, T, D)
        new_state = []
        for block, layer_state in zip(self.blocks, state):
            x, layer_state = block(x, layer_state, cu_seqlens)
            new_state.append(layer_state)
        logits = self.head(self.norm(x))                              # (B, T, vocab)
        if sequence.group_of(self) is not None:
            new_state = None          # per-rank slices of caches: nothing a decode could continue from
        aux = self.balance_loss()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
            if aux is not None:
                loss = loss + self.config.aux_loss_coef * aux
        return CausalLMOutput(logits, new_state, loss, aux)

    def balance_loss(self) -> torch.Tensor | None:
        """The mean load-balancing loss of the mixture-of-memories layers in the last forward
        (each layer's ``aux_loss``), None without such layers. ``forward`` adds
        ``aux_loss_coef`` times it to the loss; code that computes its own loss adds it likewise."""
        balance = [b.mixer.aux_loss for b in self.blocks if getattr(b.mixer, "aux_loss", None) is not None]
        return torch.stack(balance).mean() if balance else None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None, state=None):
        """Sample ``max_new_tokens`` after ``input_ids`` [B, T]; returns [B, T + max_new_tokens].

        The prompt is read in one chunked forward; each new token is then one
        T == 1 step that carries the mixers' states (constant memory per token for
        linear layers, a growing KV cache for attention layers).
        input_ids: int64 [B, T] with B, T >= 1 (a non-empty prompt). max_new_tokens: >= 0.
        temperature, top_k, top_p: as in :func:`sample` (temperature 0 means greedy).
        Raises ValueError naming the argument before any forward pass when one is out of range.
        """
        if input_ids.dim() != 2 or 0 in input_ids.shape:
            raise ValueError(f"input_ids: expected a non-empty prompt of shape [B, T] with B, T >= 1, "
                             f"got shape {list(input_ids.shape)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
        _check_sampling(temperature, top_k, top_p)
        out = self(input_ids, state=state)
        tokens, state = [input_ids], out.state
        logits = out.logits[:, -1]
        for _ in range(max_new_tokens):
            nxt = sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            tokens.append(nxt)
            out = self(nxt, state=state)
            logits, state = out.logits[:, -1], out.state
        return torch.cat(tokens, dim=1)


def _check_sampling(temperature, top_k, top_p) -> None:
    """ValueError naming the first of temperature, top_k, top_p that :func:`sample` cannot use."""
    def number(x) -> float:
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan

    if not 0 <= number(temperature) < math.inf:                  # NaN fails every comparison
        raise ValueError(f"temperature: expected a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k: expected None or an integer >= 1, got {top_k!r}")
    if top_p is not None and not 0 < number(top_p) <= 1:
        raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")


def sample(logits, *, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row from ``logits`` [B, vocab] -> [B, 1] (temperature, top-k, nucleus).

    temperature: finite, >= 0 (0: greedy). top_k: None or >= 1 (more than the vocabulary
    keeps all). top_p: None or in (0, 1]: keep the smallest set of tokens whose probability
    reaches it. Out-of-range values raise ValueError naming the argument.
    """
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p          # keep the smallest set reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)
