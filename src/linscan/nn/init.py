"""One initialisation for every linscan layer: variance-preserving matrices, small residual writes.

The rule (applied by :class:`linscan.models.LinscanForCausalLM` to the whole stack,
and usable on any module of linear layers with :func:`init_weights`):

1. Every ``nn.Linear`` weight ``[out, in]`` is drawn from ``N(0, 1 / in)`` (LeCun /
   fan-in: a unit-RMS input gives unit-RMS outputs, whatever the width), and its bias
   is zero.
2. The projections that write into the residual stream (a mixer's ``o_proj``, the
   MLP's ``down_proj``) are further divided by ``sqrt(2 * n_layers)`` (GPT-2, Radford
   et al. 2019): the 2 L writes together start at about the RMS of one.
3. Parameters a mixer set up as its paper says (gate biases, decay rates, the cells of
   Newton-parallel RNNs) are marked with :func:`keep_init` and left alone.

With the LM's embedding at unit RMS (``LinscanConfig.init_std = 1``), the token itself
dominates the residual stream at the start of training, and every layer can read it.
The measurement that chose this rule over GPT-2's ``N(0, 0.02)`` everywhere (which at
d_model = 64 leaves the embedding 30x smaller than the mixers' writes under PyTorch's
default Linear init, and induction never forms on MQAR) is in the README's
"Initialisation" section.
"""

from __future__ import annotations

import math

from torch import nn

RESIDUAL_OUTPUTS = ("o_proj", "down_proj")


def keep_init(*items: nn.Module | nn.Parameter) -> None:
    """Mark parameters (or all parameters of modules) so that :func:`init_weights` skips them."""
    for item in items:
        for p in ([item] if isinstance(item, nn.Parameter) else item.parameters()):
            p._keep_init = True


def init_weights(module: nn.Module, *, n_layers: int) -> None:
    """Apply the rule above to every ``nn.Linear`` inside ``module``, in place.

    module: a mixer, a block or a whole stack. n_layers: depth of the residual stream
    the module writes into (sets the ``1 / sqrt(2 * n_layers)`` of rule 2).
    """
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers: expected a positive int, got {n_layers!r}")
    residual_gain = 1 / math.sqrt(2 * n_layers)
    for name, layer in module.named_modules():
        if not isinstance(layer, nn.Linear):
            continue
        if not getattr(layer.weight, "_keep_init", False):
            gain = residual_gain if name.rsplit(".", 1)[-1] in RESIDUAL_OUTPUTS else 1.0
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
        if layer.bias is not None and not getattr(layer.bias, "_keep_init", False):
            nn.init.zeros_(layer.bias)
